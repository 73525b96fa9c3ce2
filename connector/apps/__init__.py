"""The connector as a CRM application: request checks (verify.py) and the amoCRM widget archive
(amocrm_widget.py). The install, event and placement handlers build on these."""
