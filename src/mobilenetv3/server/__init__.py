"""An HTTP inference server: the Open Inference Protocol (KServe v2), ``/predict``, metrics, a web page and
dynamic batching (``mobilenetv3 serve``; needs the ``serve`` extra: ``pip install 'mobilenetv3[serve]'``)."""
from .runtime import RUNTIMES, ServedModel, load_served_model
from .uploads import BadRequest

__all__ = ["RUNTIMES", "ServedModel", "load_served_model", "BadRequest", "create_app", "ServerSettings"]


def __getattr__(name):  # the app needs the serve extra (starlette); the model loading does not
    if name in ("create_app", "ServerSettings"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
