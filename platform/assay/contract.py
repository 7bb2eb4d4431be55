"""Moved to `assay.tracking.contract` (MLflow is imported only in the tracking package). Models
logged before the move pickled their pyfunc as `assay.contract.AssayModel`: this name keeps them
loading."""

from assay.tracking.contract import AssayModel, ContractError  # noqa: F401
