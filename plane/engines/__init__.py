"""Engines: the Docker engines (Plane's drones) one plane places backends on.

* :mod:`plane.engines.config`: ``--engine NAME=URL[,publish=..][,pool=..][,max=N][,tls=DIR]``
  and ``--engines-file`` (TOML), parsed and checked.
* :mod:`plane.engines.registry`: the engines' state, a pure fold of the
  ``engine.*`` events of the log.
* :mod:`plane.engines.placement`: the pure choice of an engine for a new backend.
* :mod:`plane.engines.health`: the pure decision "lost" / "returned" from when an
  engine last answered.

The IO around them (pinging, watching each engine's exits, recording the
events, terminating a lost engine's backends) is the supervisor's
(:mod:`plane.actors.supervisor`).
"""
