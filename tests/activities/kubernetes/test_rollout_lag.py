"""When a Deployment's ready count can be believed: its ReplicaSets' own status.

The race this guards against (asleep, then deployed: 2 -> 0 -> 2 replicas) lasts a few
milliseconds on the real control plane, too short to hit on purpose there; the
Deployment's counts and the ReplicaSets are given here as the API returned them in the
CI run that caught it (status still 2 ready, pods about to be deleted)."""

from __future__ import annotations

from activities.kubernetes.workloads import replica_set_lag


def replica_set(generation: int, observed: int, ready: int) -> dict[str, object]:
    return {
        "metadata": {"name": "web-5d8f", "generation": generation},
        "status": {"observedGeneration": observed, "readyReplicas": ready},
    }


def test_a_replica_set_behind_its_generation_is_not_ready() -> None:
    # Scaled to 0 (generation 2) and back to 2 (generation 3); its controller last
    # wrote status for generation 1, when both pods were ready.
    lag = replica_set_lag([replica_set(generation=3, observed=1, ready=2)], want=2)
    assert lag == "the replica set controller has not observed generation 3 of ReplicaSet web-5d8f"


def test_ready_pods_must_add_up_to_the_wanted_count() -> None:
    assert replica_set_lag([replica_set(3, 3, ready=1)], want=2) == (
        "1/2 pods of the current ReplicaSet ready")
    assert replica_set_lag([], want=2) == "0/2 pods of the current ReplicaSet ready"


def test_an_observed_replica_set_with_every_pod_ready_is_ready() -> None:
    assert replica_set_lag([replica_set(3, 3, ready=2)], want=2) is None
    assert replica_set_lag([], want=0) is None  # asleep: nothing to wait for
