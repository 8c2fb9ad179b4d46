"""Bound propagation for certification: op rules (:mod:`.rules`), the dispatch-mode pass (:mod:`.propagate`),
the linear relaxation (:mod:`.relax`) and the torch-free ``--domain`` parser (:mod:`.domain`).

Engine-level and private: the public entry point is :func:`relu_doctor.certify` (:mod:`relu_doctor.certification`). Importing this
package imports nothing; :mod:`.domain` stays torch-free so the command line can check ``--domain`` up front.
"""
