using Treaty.Cli;

namespace Treaty.Cli.Tests;

/// <summary>The README's main command, end to end: real processes, real HTTP, real SQLite files.</summary>
public sealed class DemoTests
{
    [Fact]
    public async Task Demo_RunsEveryScenario_AndExitsZeroWithEveryInvariantHeld()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        using var demo = ChildProcess.StartDotnet("demo", dll, ["demo"], new Dictionary<string, string> { ["NO_COLOR"] = "1", ["TERM"] = "dumb" });

        var exitCode = await demo.WaitForExitAsync(TimeSpan.FromMinutes(5), CancellationToken.None);

        var output = demo.Output;
        exitCode.ShouldBe(0, output);
        output.ShouldContain("Every invariant held.", customMessage: output);
        foreach (var scenario in new[]
                 {
                     "happy path", "payment declined", "out of stock after payment",
                     "coordinator killed mid-saga", "participant 503 twice", "compensation keeps failing",
                 })
        {
            output.ShouldContain($"✓ {scenario}", customMessage: output);
        }

        foreach (var protocol in new[] { "saga", "tcc", "2pc", "3pc", "choreography" })
        {
            output.ShouldContain($"✓ checkout under {protocol}: CONFIRMED, CANCELLED, CANCELLED", customMessage: output);
        }

        foreach (var experiment in Treaty.Cli.Experiments.ExperimentCatalogue.All)
        {
            output.ShouldContain($"✓ {experiment.Name}:", customMessage: output);
        }

        // The stuck transaction was listed by `tx list --stuck` and finished by `tx retry`.
        output.ShouldContain("$ treaty tx list --stuck");
        output.ShouldContain("Retry accepted");
    }

    [Theory]
    [InlineData("--protocol", "2pc", "✓ checkout under 2pc: CONFIRMED, CANCELLED, CANCELLED")]
    [InlineData("--protocol", "choreography", "✓ checkout under choreography: CONFIRMED, CANCELLED, CANCELLED")]
    [InlineData("--experiment", "double-charge", "✓ double-charge:")]
    public async Task Demo_OnePart_RunsOnlyThatPart(string option, string value, string expected)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        using var demo = ChildProcess.StartDotnet("demo", dll, ["demo", option, value], new Dictionary<string, string> { ["NO_COLOR"] = "1", ["TERM"] = "dumb" });

        var exitCode = await demo.WaitForExitAsync(TimeSpan.FromMinutes(3), CancellationToken.None);

        exitCode.ShouldBe(0, demo.Output);
        demo.Output.ShouldContain(expected, customMessage: demo.Output);
        demo.Output.ShouldNotContain("happy path", customMessage: demo.Output);
        demo.Output.ShouldContain("Every invariant held.", customMessage: demo.Output);
    }

    [Fact]
    public async Task Demo_UnknownProtocol_IsAUsageError()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        using var demo = ChildProcess.StartDotnet("demo", dll, ["demo", "--protocol", "4pc"], new Dictionary<string, string> { ["NO_COLOR"] = "1" });

        var exitCode = await demo.WaitForExitAsync(TimeSpan.FromSeconds(60), CancellationToken.None);

        exitCode.ShouldNotBe(0, demo.Output);
        demo.Output.ShouldContain("4pc", customMessage: demo.Output);
    }

    [Fact]
    public async Task TxList_UnreachableServer_ExitsOneWithAClearMessage()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        var port = ChildProcess.FreePort();
        using var cli = ChildProcess.StartDotnet("tx", dll, ["tx", "list", "--server", $"http://127.0.0.1:{port}"], new Dictionary<string, string> { ["NO_COLOR"] = "1" });

        var exitCode = await cli.WaitForExitAsync(TimeSpan.FromSeconds(60), CancellationToken.None);

        exitCode.ShouldBe(1, cli.Output);
        cli.Output.ShouldContain("Cannot reach");
    }

    [Fact]
    public async Task TxShow_InvalidServerUrl_ExitsWithUsageError()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        using var cli = ChildProcess.StartDotnet("tx", dll, ["tx", "show", "some-gid", "--server", "not a url"], new Dictionary<string, string> { ["NO_COLOR"] = "1" });

        var exitCode = await cli.WaitForExitAsync(TimeSpan.FromSeconds(60), CancellationToken.None);

        exitCode.ShouldBe(2, cli.Output);
        cli.Output.ShouldContain("--server");
    }
}
