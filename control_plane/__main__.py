from .cli import serve

serve(prog_name="tether serve")
