from gsm.cli import main

main()
