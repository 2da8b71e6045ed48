"""Benchmarks: what capturing every layer costs against a plain forward, and where a study's time goes.

The measuring code: ``capture.py`` (capture against a plain forward), ``pipeline.py`` (a study by stage,
marginal cost, before/after), ``estimate.py`` (durations announced before a benchmark starts); the command
is ``layerscope.cli.bench`` (``layerscope-bench``); ``similarity.py`` times ``layerscope-compare`` per
similarity measure (``--compare``).

    layerscope-bench [--quick | --full] [--device cpu|cuda] [--rounds 3] [--cases vit_s8:480] [--out bench.csv]
    layerscope-bench --pipeline [--quick] [--device cpu|cuda] [--models dinov2_vits14_bundled ...] [--rounds 3]
    layerscope-bench --pipeline --marginal [--models ...] [--rounds 2]
    layerscope-bench --pipeline [--marginal] --against OTHER/src   (before/after, interleaved)

Every command first prints an estimate of its duration, from the model sizes and a 0.3 s probe of
this machine's matrix-multiply rate (so a busy machine gets a longer estimate), and its real duration
at the end.

**Capture** (default: ViT-S/8 at 224 px, batch 1, 3 rounds, a few minutes on 2 cores; ``--full``:
ViT-S/8 at 224 and 480 px and ViT-B/16 at 224 px, batches 1 and 8, 5 rounds). Variants, each in a
process of its own that stays alive across rounds (so peak memory is its own), random-init weights:

- ``plain``: timm ViT forward, fused attention (the baseline every ratio refers to);
- ``ours``: the same forward with this framework's hooks, CLS rows of every layer and head;
- ``hf_eager``: transformers ViT with ``output_attentions=True`` (eager attention, all N x N maps);
- ``hf_sdpa``: transformers ViT plain forward (SDPA), to separate library from method costs;
- ``timm_extract``: timm's ``AttentionExtract`` with fused attention off (all N x N maps).

Each process builds its model and runs one warm-up forward; then, round after round, every
variant runs one timed forward in turn (plain, ours, hf_eager, ... plain, ours, ...). A ratio is
taken within a round, so a machine that slows down for a while (another job, thermal limits)
slows every variant of that round alike; the table gives the median ratio over rounds with its
min-max spread. Peak memory is the growth of the process's peak RSS over all its forwards (CPU,
with glibc's mmap threshold fixed so freed blocks leave RSS), or ``torch.cuda.max_memory_allocated``
above the resting allocation (GPU).

**Pipeline** (``--pipeline``). The default study (``layerscope model=M cache.enabled=false``) run
as a user runs it, once per round in a fresh process, split by stage from its ``run_summary.json``:
backbone forward + maps, scoring (rows), writing (``.npz`` + grid PNGs, in the background: the
time its thread worked, and the time the study waited for it), the rest of the loop (data,
``results.csv``), and the dataset-level pass. Stages are per image in the steady state, after the
first batch: its wait for the first images (DataLoader workers starting, first reads) is a one-time
cost, reported apart and counted once in the projection, like the startup. In the same round, this process times the
backbone alone (forward + maps of the same images, ``mapsource.MapSource``, no scoring, no
writing); the table gives each stage per image and against the backbone of the same round, the
end-to-end rate against the backbone-only rate, and projects the wall time of an MVTec-size
study (1,700 test images, same layers and maps) per backbone on this machine (and on CUDA when
it is present). Per image, in milliseconds: every stage, the time outside the backbone, and the
images per second end to end against the backbone alone.

**Marginal** (``--pipeline --marginal``). The per-image cost outside the backbone measured a second
way: the study's loop time at two dataset sizes (16 and 48 images), each with a cold map cache (the
backbone runs) and then a warm one (no backbone: maps read from the cache); the slope between the two
sizes is the marginal cost of one more image, cold and warm, free of startup and of any per-run cost.

**Before/after** (``--pipeline [--marginal] --against DIR``). The same studies run by other code (``DIR``: the
``src`` folder of another checkout, e.g. ``git worktree add /tmp/before HEAD~3`` then ``/tmp/before/src``),
interleaved with this code's in every round (their order alternating from round to round), so both see the
same machine; its rows are labelled ``MODEL@before`` and this code's ``MODEL@after``, and one line per model
compares the medians.
"""
