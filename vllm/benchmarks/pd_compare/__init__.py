"""PD versus colocated: the seed's comparison table, CDF plots and a goodput sweep."""
