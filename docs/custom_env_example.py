import gymnasium as gym

import fst_env

typos = {"neccessary": "necessary", "seperate": "separate", "rythm": "rhythm", "wierd": "weird"}
rows = [{"prompt": f"Fix the spelling of '{typo}'.", "answer": word} for typo, word in typos.items()]
fst_env.register_task(  # reward_fn returns a reward, or (reward, feedback the model can learn from)
    "myorg/Spelling-v0", {"train": rows[:3], "validation": rows[3:]},  # evaluation is held out: validation
    reward_fn=lambda response, problem: (1.0, "Correct.") if response.strip() == problem["answer"]
    else (0.0, f"Misspelled: {response.strip()!r} should be {problem['answer']!r}."),
)
env = gym.make("myorg/Spelling-v0")
prompt, info = env.reset(options={"problem_id": 0})
obs, reward, terminated, truncated, info = env.step("necesary")
print(prompt, "->", reward, info["verdict"], "|", info["feedback"])
