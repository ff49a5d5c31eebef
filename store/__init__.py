"""The control-plane store: the environment model, its secrets, and what runs the engine
(tokens, deliveries, preview slots, the audit trail), in PostgreSQL.

`Store` is the repository (store/repository.py); migrations are store/migrations/*.sql.
"""

from store.collections import Collection, Environments
from store.errors import Conflict, Invalid, MigrationError, NotFound, StoreError
from store.operations import token_hash
from store.records import (
    AuditEntry,
    ClusterCredentials,
    ClusterMetadata,
    ImportResult,
    ImportSummary,
    Page,
    ProjectRecord,
    ProjectSpec,
    ScopedVariable,
    SecretMetadata,
    TokenRecord,
    VariableRef,
)
from store.repository import Store

__all__ = [
    "AuditEntry", "ClusterCredentials", "ClusterMetadata", "Collection", "Conflict",
    "Environments", "ImportResult", "ImportSummary", "Invalid", "MigrationError", "NotFound",
    "Page", "ProjectRecord", "ProjectSpec", "ScopedVariable", "SecretMetadata", "Store",
    "StoreError", "TokenRecord", "VariableRef", "token_hash",
]
