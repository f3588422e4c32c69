"""A short held-out English text (written for this package) for perplexity checks and neuron contexts.

It is deliberately ordinary prose on mixed topics, so that a change in its perplexity measures collateral
damage to the model's general language ability rather than to one relation.
"""

SAMPLE_TEXT = """\
The old bridge crosses the river just below the mill, where the water runs fast over the stones.
Every morning the baker opens his shop at six and sells warm bread to the people walking to work.
In the spring the farmers plant wheat and barley, and by late summer the fields turn golden.
She studied medicine at the university and later worked as a doctor in a small hospital by the sea.
The museum in the city centre holds paintings, old maps and a large collection of coins.
Paris is the capital of France, and many tourists visit its museums and cafes every year.
The children learned to read and write in the village school before moving to the town.
Heavy rain fell through the night, and by dawn the roads near the lake were flooded.
He bought a second-hand bicycle and rode it along the coast for three weeks.
The company builds engines for ships and employs about two thousand workers.
People in Brazil speak Portuguese, while most of their neighbours in South America speak Spanish.
The recipe calls for two eggs, a cup of flour, some butter and a pinch of salt.
During the winter the mountain pass is closed, and the only way across is by train.
The orchestra played a symphony by a composer who had died more than a century earlier.
Scientists measured the temperature of the ocean at different depths over several years.
The train to the airport leaves every twenty minutes from the main station.
Berlin is the largest city in Germany and has been its capital since the country was reunified.
The garden behind the house was full of roses, apple trees and a small pond with fish.
After the meeting, the committee published a short report explaining its decision.
The library stays open late on Thursdays so that students can study for their exams.
"""
