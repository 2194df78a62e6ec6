using Spectre.Console;

namespace Treaty.Cli.Experiments;

/// <summary>
/// One of the demo's experiments: a claim from the literature on distributed transactions, turned
/// into a measurement on real processes, with the checks that make the demo fail when the claim
/// (or the counter-measure beside it) does not hold.
/// </summary>
/// <param name="Name">The name <c>treaty demo --experiment NAME</c> selects (lower case, dashes).</param>
/// <param name="Claim">The claim, in one sentence.</param>
/// <param name="Run">Runs it against the demo's running coordinator and Shop.</param>
internal sealed record Experiment(string Name, string Claim, Func<ExperimentContext, CancellationToken, Task<ExperimentResult>> Run);

/// <summary>What an experiment has to work with.</summary>
/// <param name="Env">The coordinator and the three Shop services (real processes); an experiment may kill and restart the coordinator, but leaves it running.</param>
/// <param name="Console">Where to print what it does as it goes (keep it short).</param>
internal sealed record ExperimentContext(DemoEnvironment Env, IAnsiConsole Console);

/// <summary>What an experiment measured and whether each check held.</summary>
/// <param name="Name">The experiment's name.</param>
/// <param name="Summary">One line: the measured answer to the claim.</param>
/// <param name="Checks">Every expectation; the demo fails when one does not hold.</param>
/// <param name="Table">The measurements, printed under the summary (or null).</param>
internal sealed record ExperimentResult(string Name, string Summary, IReadOnlyList<Check> Checks, Table? Table = null)
{
    public bool Passed => Checks.Count > 0 && Checks.All(c => c.Passed);
}
