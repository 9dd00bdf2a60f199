"""The council (README "Council"): several role agents answer in parallel, the Director weighs
their answers and gives the verdict; every call is an ordinary dispatch (routing/dispatch.py)."""
