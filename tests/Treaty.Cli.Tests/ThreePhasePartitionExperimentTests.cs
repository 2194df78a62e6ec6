using Spectre.Console;
using Treaty.Cli.Experiments;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

public sealed class ThreePhasePartitionExperimentTests(ITestOutputHelper log)
{
    [Fact]
    public async Task Run_FindsASeedWhere3pcCommitsOnOneSideAndAbortsOnTheOther_AndPrintsItsTimeline()
    {
        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text),
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 400;

        // The experiment runs the simulation in-process: it never reads the demo's processes.
        var result = await ThreePhasePartitionExperiment.Definition.Run(new ExperimentContext(Env: null!, console), CancellationToken.None);
        result.Table.ShouldNotBeNull();
        console.Write(result.Table);
        var output = text.ToString();
        log.WriteLine($"{result.Summary}\n{output}");

        result.Name.ShouldBe("3pc-partition");
        result.Passed.ShouldBeTrue(string.Join("\n", result.Checks.Select(c => $"{c.Passed} {c.What}: {c.Detail}")));
        result.Checks.Count.ShouldBe(3);
        result.Summary.ShouldMatch(@"^seed \d+: tx\d+ committed at [a-z, ]+ and aborted at [a-z, ]+ under a partition \(found after \d+ seeds in \d+ ms\)$");
        output.ShouldContain("TREATY_SIM_VARIANT=partition", customMessage: output);
        output.ShouldContain("PARTITION:", customMessage: output);
        output.ShouldContain("doCommit -> 200 captured", customMessage: output);
        output.ShouldContain("abort -> 200 released", customMessage: output);
        output.ShouldContain("MIXED", customMessage: output);
    }

    [Fact]
    public void Run_NoSeedInRangeMixes_FailsWithItsCheck()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) });

        // Seed 0 alone does not mix outcomes (the first that does is 6 today).
        var result = ThreePhasePartitionExperiment.Run(console, fromSeed: 0, maxSeeds: 1, CancellationToken.None);

        result.Passed.ShouldBeFalse();
        result.Checks.ShouldHaveSingleItem().Passed.ShouldBeFalse();
        result.Summary.ShouldBe("no seed of 0 to 0 made 3PC commit on one side and abort on the other");
    }
}
