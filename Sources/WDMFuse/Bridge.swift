import WDM
