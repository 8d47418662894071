from txsuite.cli import main

main()
