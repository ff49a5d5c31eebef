"""The engine's own control plane as activities: planning (planning.py), preview slots
and source environments from the store (store.py) or from blueprint files
(blueprint_files.py), and Temporal's visibility for the sweeper (visibility.py)."""
