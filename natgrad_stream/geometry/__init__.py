"""Geometry of the parameter space: the running metric ``G`` (:mod:`.fisher`), its
regularized root ``W = G^½`` (:mod:`.whitening`) and when to refresh it (:mod:`.schedule`).
"""
