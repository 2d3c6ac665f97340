from qlass.cli import main

main()
