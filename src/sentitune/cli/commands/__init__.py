"""One module per `sentitune` command, each with `run(args) -> exit status`: the flags become keyword
arguments of one API call, and the result is printed. `cli.main` imports a command's module only
when that command runs."""
