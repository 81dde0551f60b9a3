"""A method's ``(trainable, frozen)`` parameter names for a forward graph, as the exporter asks for them."""
from edge_lbp import methods
from edge_lbp.export.training import parameter_names


def split(forward, spec="all"):
    return methods.parse(spec).split(parameter_names(forward), forward)
