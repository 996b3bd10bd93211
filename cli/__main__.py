from vcache.cli.app import main

main()
