from mvf.cli import entry

entry()
