"""The application: the ``natgrad-stream`` command (:mod:`.cli`), run directories
(:mod:`.runs`), evaluation (:mod:`.evaluate`) and the demo (:mod:`.demo`).
"""
