"""Routing prompts to adapters (``adapter="auto"``): a mixture of LoRA experts.

``selection`` holds what every router shares (adapter cards, turning scores into a decision, the
resources lent to router plugins); ``service`` the ``RouterService`` that builds router plugins and
routes, fits and evaluates them over the adapter store; ``evaluation`` the scoring of a router on
labelled prompts. The routers themselves are plugins (``adaptrix_plugins/routers``).
"""
