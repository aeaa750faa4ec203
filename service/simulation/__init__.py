"""``refund-retry simulate``: failed payments drawn from a recoverability model, retried by the
real decision code on a simulated clock, with the sandbox gateway answering by the model.

- :mod:`service.simulation.model`: the recoverability model (a JSON file) and its validation;
- :mod:`service.simulation.engine`: the population, the discrete-event simulation of the
  ``payment-smart`` and ``payment-fixed`` schedules and of an oracle, and the independent
  network-rule checker;
- :mod:`service.simulation.report`: the results per strategy, as a table or JSON.
"""

from __future__ import annotations
