"""The composition root: the `konsilium` command and `create_app`, the only code that imports
every layer (gateway, routing, model_store and the ground floor `konsilium`), on top of them all."""
