"""The cocotb testbenches of the units (`tb_<unit>.py`), each with its simulation top."""
