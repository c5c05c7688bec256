from cml_cli.cli import main

main()
