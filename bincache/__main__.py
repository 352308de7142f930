from bincache.cli.main import run

run()
