"""The pipeline: data → score → train → sample → evaluate → predict → log (`run`), its config checks
(`validate`, `memory`) and run records (`status`, `interrupt`)."""
