"""Build-pipeline machinery: the stage contract, build context, executors and checkpoints."""
