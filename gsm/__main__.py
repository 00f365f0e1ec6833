from gsm.cli.main import main

main()
