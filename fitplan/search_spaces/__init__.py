"""Search spaces and their weight-sharing supernets.

Importing this package registers the built-in spaces (``ofa_mbv3``, ``fbnet``, ``elastic_resnet``,
``elastic_vit``) and their timm converters. Use :func:`create_space` to build one by name.
"""
from fitplan.search_spaces.base import (
    SPACES,
    Config,
    Dimension,
    SearchSpace,
    UnitCost,
    create_space,
    list_spaces,
    register_space,
)
from fitplan.search_spaces.supernet import Supernet
from fitplan.search_spaces.timm_import import TIMM_CONVERTERS, from_timm, register_timm_converter

# Built-in spaces register themselves (and their timm converters) on import.
from fitplan.search_spaces.ofa_mbv3 import OFAMobileNetV3Space, OFAMobileNetV3Supernet  # noqa: E402
from fitplan.search_spaces.fbnet import FBNetSpace, FBNetSupernet  # noqa: E402
from fitplan.search_spaces.elastic_resnet import ElasticResNetSpace, ElasticResNetSupernet  # noqa: E402
from fitplan.search_spaces.elastic_vit import ElasticViTSpace, ElasticViTSupernet  # noqa: E402

__all__ = [
    "SPACES", "TIMM_CONVERTERS", "Config", "Dimension", "ElasticResNetSpace", "ElasticResNetSupernet",
    "ElasticViTSpace", "ElasticViTSupernet", "FBNetSpace", "FBNetSupernet", "OFAMobileNetV3Space",
    "OFAMobileNetV3Supernet", "SearchSpace", "Supernet", "UnitCost", "create_space", "from_timm",
    "list_spaces", "register_space", "register_timm_converter",
]
