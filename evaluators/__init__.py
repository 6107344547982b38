"""Evaluators: `Class(data_path, eval_metadata, **kwargs)` with required_outputs, begin_eval, update_batch, result."""
