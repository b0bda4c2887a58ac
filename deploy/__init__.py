"""The composition root: how the stages are wired, in one process or as services.

The ``hdrstream`` command (:mod:`deploy.cli`), the embedded pipeline
(:mod:`deploy.pipeline`), each stage as a service (:mod:`deploy.service`), the deployment
file (:mod:`deploy.deployment`), ``hdrstream up`` (:mod:`deploy.up`), and the dispatcher and
inference workers of a scaled-out graph (:mod:`deploy.dispatch`, :mod:`deploy.worker`). It
is the one package that knows every stage; no stage imports it. The Dockerfile,
the deployment file and Prometheus' scrape config live beside it.
"""
