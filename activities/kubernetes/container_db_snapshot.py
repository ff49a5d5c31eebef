"""Container databases from a volume snapshot of the golden copy, where the cluster can.

Where the cluster serves the CSI snapshot API (snapshot.storage.k8s.io/v1) with at least
one VolumeSnapshotClass, and a ready VolumeSnapshot of the golden volume exists, a
container database's claim is made from it (`PersistentVolumeClaim.spec.dataSource`):
the storage system's copy-on-write clone, at any size, instead of the Job restoring the
golden dump. Otherwise (no API group, no class, no snapshot) the restore Job, as before.

The golden snapshots live in one namespace (`golden_namespace`, default
`preview-golden`), each annotated with what it holds:

    preview.dev/golden-dump:  the golden_dump_s3_uri it was made from (what specs name)
    preview.dev/masking:      the masking digest of that dump (a masked_clone checks it)
    preview.dev/credentials:  a Secret there with the `password` of role `preview`

A claim's dataSource must be in the claim's own namespace, and a preview's namespace is
new, so the snapshot is re-bound there: a VolumeSnapshotContent (cluster-scoped) names
the golden's snapshot handle with deletionPolicy Retain (removing a preview's copy never
removes the golden's), and a VolumeSnapshot in the preview's namespace is bound to it.
The volume keeps the golden's data directory, and with it the golden's password; a
short Job (`rekey_command`) then gives the role the preview's own password.
"""

from __future__ import annotations

from dataclasses import dataclass

from activities.kubernetes.api import Json, KubeApi, Ref, secret_value
from domain.resources import ContainerDatabaseSpec

GOLDEN_NAMESPACE = "preview-golden"
DUMP_ANNOTATION = "preview.dev/golden-dump"
MASKING_ANNOTATION = "preview.dev/masking"
CREDENTIALS_ANNOTATION = "preview.dev/credentials"
GOLDEN_SNAPSHOT_ANNOTATION = "preview.dev/golden-snapshot"  # on a preview's content
VIA_SNAPSHOT, VIA_JOB = "volume_snapshot", "restore_job"


@dataclass(frozen=True)
class GoldenSnapshot:
    """A ready snapshot of the golden volume, and what re-binding it needs."""

    name: str
    namespace: str
    handle: str
    driver: str
    snapshot_class: str | None
    masking: str | None
    password: str


@dataclass(frozen=True)
class SnapshotObjects:
    """The preview's re-bound copy of the golden snapshot: where each object lives."""

    snapshot: Ref
    content: Ref

    @classmethod
    def of(cls, spec: ContainerDatabaseSpec) -> SnapshotObjects:
        name = f"{spec.name}-golden"
        # Cluster-scoped: the namespace (the preview's own, unique) keeps it unique.
        return cls(Ref.of("VolumeSnapshot", name, spec.namespace),
                   Ref.of("VolumeSnapshotContent", f"{spec.namespace}-{name}"))


def snapshot_classes(api: KubeApi) -> list[Json]:
    """The cluster's VolumeSnapshotClasses; none when the API group is not served."""
    return api.list("VolumeSnapshotClass", None, missing_ok=True)


def golden_snapshot(api: KubeApi, spec: ContainerDatabaseSpec,
                    namespace: str = GOLDEN_NAMESPACE, *, pinned: str | None = None,
                    ) -> GoldenSnapshot | None:
    """The newest ready snapshot of the golden volume for the spec's golden dump, or
    None: then the restore Job loads the dump. `pinned` ("namespace/name"): that one
    only, the one a preview's volume was made from."""
    if not spec.golden_dump_s3_uri or not snapshot_classes(api):
        return None
    name = None
    if pinned:
        namespace, _, name = pinned.partition("/")
    candidates = sorted(
        (s for s in api.list("VolumeSnapshot", namespace, missing_ok=True)
         if (name is None or s["metadata"]["name"] == name)
         and _annotations(s).get(DUMP_ANNOTATION) == spec.golden_dump_s3_uri
         and (s.get("status") or {}).get("readyToUse") is True
         and (s.get("status") or {}).get("boundVolumeSnapshotContentName")),
        key=lambda s: (s["metadata"].get("creationTimestamp") or "", s["metadata"]["name"]),
        reverse=True)
    for found in candidates:
        content = api.get(Ref.of("VolumeSnapshotContent",
                                  found["status"]["boundVolumeSnapshotContentName"]))
        handle = ((content or {}).get("status") or {}).get("snapshotHandle")
        credentials = _annotations(found).get(CREDENTIALS_ANNOTATION)
        password = secret_value(api.get(Ref.of("Secret", credentials, namespace)),
                                "password") if credentials else None
        if content is None or not handle or not password:
            continue  # not usable (yet): an older one may be
        return GoldenSnapshot(
            name=found["metadata"]["name"], namespace=namespace, handle=handle,
            driver=content["spec"]["driver"],
            snapshot_class=found["spec"].get("volumeSnapshotClassName"),
            masking=_annotations(found).get(MASKING_ANNOTATION), password=password)
    return None


def pinned_golden(api: KubeApi, spec: ContainerDatabaseSpec) -> str | None:
    """The golden snapshot ("namespace/name") the preview's copy was bound to, if it was:
    a re-run keeps to it, though a golden refresh may have made a newer one since (the
    content's handle cannot change, nor can the volume made from it)."""
    content = api.get(SnapshotObjects.of(spec).content)
    return _annotations(content or {}).get(GOLDEN_SNAPSHOT_ANNOTATION)


def _annotations(obj: Json) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def content_manifest(spec: ContainerDatabaseSpec, objects: SnapshotObjects,
                     golden: GoldenSnapshot) -> Json:
    body: Json = {
        "deletionPolicy": "Retain",  # the snapshot itself is the golden's
        "driver": golden.driver,
        "source": {"snapshotHandle": golden.handle},
        "volumeSnapshotRef": {"name": objects.snapshot.name,
                              "namespace": objects.snapshot.namespace},
    }
    if golden.snapshot_class:
        body["volumeSnapshotClassName"] = golden.snapshot_class
    manifest = objects.content.manifest(spec.owner.labels(), spec=body)
    manifest["metadata"]["annotations"] = {
        GOLDEN_SNAPSHOT_ANNOTATION: f"{golden.namespace}/{golden.name}"}
    return manifest


def snapshot_manifest(spec: ContainerDatabaseSpec, objects: SnapshotObjects,
                      golden: GoldenSnapshot) -> Json:
    body: Json = {"source": {"volumeSnapshotContentName": objects.content.name}}
    if golden.snapshot_class:
        body["volumeSnapshotClassName"] = golden.snapshot_class
    return objects.snapshot.manifest(spec.owner.labels(), spec=body)


def claim_source(claim: Json | None) -> str | None:
    """The VolumeSnapshot an existing claim was made from (a claim's source never
    changes, so a re-run follows the choice the first run made), or None."""
    source = ((claim or {}).get("spec") or {}).get("dataSource") or {}
    return str(source["name"]) if source.get("kind") == "VolumeSnapshot" else None
