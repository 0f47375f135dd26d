"""A Seldon MLServer runtime for an exported edgecnn model: onnxruntime in ``load()``, the input
decoded with NumpyCodec in ``predict()``. benchmarks/peers.py copies this file and peer_session.py
into MLServer's model folder, whose model-settings.json names ``mlserver_runtime.OnnxRuntimeModel``
and gives the model file (``parameters.uri``) and the intra-op threads (``parameters.extra``).
"""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from peer_session import open_session


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self._session = open_session(self.settings.parameters.uri, int(extra.get("intra_op_threads", 0)))
        self._input_name = self._session.get_inputs()[0].name
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        results = self._session.run(self._output_names, {self._input_name: images})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._output_names, results)],
        )
