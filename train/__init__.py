"""Training: datasets, the model registry, the training loop and run directories.

A map, in the order data flows:
- ``data``: datasets by name (``DatasetSpec``, ``load_splits``), with readers in ``idx``, ``cifar``,
  ``folder`` and downloads in ``download``; ``imageset`` holds ``ImageSet`` and ``DatasetError``.
- ``models``: ``create_model(name, ...)`` over a registry filled by ``register_model``.
- ``settings``: ``TrainSettings``, every tunable with its default (the CLI's defaults).
- ``trainer``: ``train(settings)`` and ``resume(run_dir)``, on one process or several (``nproc``, or
  under torchrun); ``augment``, ``normalisation``, ``tensors`` and ``progress`` serve it, and
  ``distributed`` holds the launcher (torchrun's) and the process group (DDP: gloo on CPU, NCCL on CUDA).
- ``checkpoint``: the run directory (``load_run``, ``RunDirError``); ``files``: atomic writes and
  ``folder_problem`` (an output folder's check).
- ``evaluate``: ``evaluate_run(run_dir)``; ``plots``: the run's figures; ``cli``: the commands.
- ``commandline``: torch-free helpers every part's commands share (``needs_extra``); the lowest layer, so
  export/, serve/ and benchmarks/ import them from here.
"""
