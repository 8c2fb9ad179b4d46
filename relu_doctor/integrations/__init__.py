"""Training-framework callbacks built on :class:`relu_doctor.watching.Watch`.

:mod:`relu_doctor.integrations.lightning` (``pip install 'relu-doctor[lightning]'``) and
:mod:`relu_doctor.integrations.transformers` (``pip install 'relu-doctor[hf]'``); importing ``relu_doctor`` or this
package imports neither framework.
"""
