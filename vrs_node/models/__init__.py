"""Everything that knows a checkpoint: building, loading and preprocessing models."""
