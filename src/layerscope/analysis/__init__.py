"""Run folders read back for analysis: rankings, the saved results of a run or sweep, pooled maps, the
few-shot tables, the randomisation check, and the output folder of layerscope-compare."""
