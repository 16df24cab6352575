import sys

from peer.run import main

sys.exit(main())
