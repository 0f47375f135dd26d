"""The onnxruntime session both peers open, set up as `edgecnn serve` sets up its own
(serve/model.py ``session_options``), without importing edgecnn: the peers' venvs do not have it.

All graph optimisations, sequential execution, ``intra_op_threads`` intra-op threads (0: onnxruntime's
default, one per physical core), one inter-op thread, and no spinning of idle threads.
"""

import onnxruntime as ort


def open_session(model_path: str, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
