using System.Text.Json;
using Spectre.Console;
using Treaty.Cli.Tests.Support;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>
/// What <c>treaty tx ...</c> prints: no escape codes without a terminal or with NO_COLOR, no word
/// or id split across lines when piped, <c>--output json</c> with the API's fields, errors on
/// standard error with exit code 1, usage errors with exit code 2.
/// </summary>
public sealed class CliOutputTests : IAsyncLifetime
{
    private const char Escape = '\u001b';
    private InProcessCoordinator _coordinator = null!;
    private TinyParticipant _participant = null!;

    private const string Instance = "cli-output-coordinator";

    private string Server => _coordinator.BaseAddress.AbsoluteUri;

    public async Task InitializeAsync()
    {
        _coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-cli-output", configureOptions: o => o.InstanceId = Instance);
        _participant = await TinyParticipant.StartAsync();
    }

    public async Task DisposeAsync()
    {
        await _participant.DisposeAsync();
        await _coordinator.DisposeAsync();
    }

    [Fact]
    public async Task TxList_PipedFromAProcess_NoEscapeCodesAndEachLongGidWholeOnOneLine()
    {
        var gid = LongGid("piped");
        await CommittedAsync(gid);

        // A colour terminal type, NO_COLOR unset: only the redirection says "no terminal".
        var result = await CliRun.ProcessAsync(
            ["tx", "list", "--server", Server],
            environment: new Dictionary<string, string?> { ["TERM"] = "xterm-256color", ["NO_COLOR"] = null });

        result.ExitCode.ShouldBe(0, result.ToString());
        result.Out.ShouldNotContain(Escape, result.ToString());
        result.Out.Split('\n').ShouldContain(line => line.Contains(gid) && line.Contains("committed"), result.ToString());
    }

    [Fact]
    public async Task TxShow_Redirected_StuckTransactionPrintsGidAndEveryErrorUnbroken()
    {
        var gid = LongGid("show");
        await StuckAsync(gid);

        var result = await CliRun.TxAsync("tx", "show", gid, "--server", Server);

        result.ExitCode.ShouldBe(0, result.ToString());
        result.Out.ShouldNotContain(Escape, result.ToString());
        var lines = result.Out.Split('\n');
        lines[0].ShouldStartWith(gid + " saga aborting (stuck)", customMessage: result.ToString());
        // The stuck line and the reason hold long sentences: each on one line, not folded at 80 columns.
        lines.ShouldContain(line => line.StartsWith("stuck on s1.compensate after 2 attempts, last: HTTP 503", StringComparison.Ordinal), result.ToString());
        lines.ShouldContain(line => line.Contains("s2.action failed", StringComparison.Ordinal) && line.StartsWith("reason: ", StringComparison.Ordinal), result.ToString());
        lines.ShouldContain(line => line.Contains("stuck") && line.Contains("s1.compensate"), result.ToString()); // the timeline
    }

    [Theory]
    [InlineData(true, null, "xterm-256color", true)]
    [InlineData(true, "", "xterm-256color", true)] // no-color.org: an empty NO_COLOR does not count
    [InlineData(true, "1", "xterm-256color", false)]
    [InlineData(true, null, "dumb", false)]
    [InlineData(false, null, "xterm-256color", false)] // a file or a pipe
    public void Decide_EscapesOnlyOnATerminalWithoutNoColor(bool isTerminal, string? noColor, string? term, bool escapes)
    {
        var rules = CliConsole.Decide(isTerminal, noColor, term);

        rules.Escapes.ShouldBe(escapes);
        rules.Terminal.ShouldBe(isTerminal);
    }

    [Fact]
    public async Task TxList_OnATerminalWithNoColor_NoEscapeCodes()
    {
        var gid = LongGid("nocolor");
        await CommittedAsync(gid);
        var text = new StringWriter();
        var console = CliConsole.Create(text, CliConsole.Decide(isTerminal: true, noColor: "1", term: "xterm-256color"));
        console.Profile.Width = 250; // a wide terminal

        (await TxCommands.ListAsync(_coordinator.Client, stuckOnly: false, console, CancellationToken.None)).ShouldBe(0);

        text.ToString().ShouldContain("committed");
        text.ToString().ShouldNotContain(Escape);
    }

    [Fact]
    public async Task TxList_OutputJson_IsTheApiListing()
    {
        var gid = LongGid("json-list");
        await CommittedAsync(gid);

        var result = await CliRun.TxAsync("tx", "list", "--server", Server, "-o", "json");

        result.ExitCode.ShouldBe(0, result.ToString());
        using var json = JsonDocument.Parse(result.Out);
        var item = json.RootElement.GetProperty("items").EnumerateArray().Single(i => i.GetProperty("gid").GetString() == gid);
        item.GetProperty("protocol").GetString().ShouldBe("saga");
        item.GetProperty("status").GetString().ShouldBe("committed");
        item.GetProperty("stuck").GetBoolean().ShouldBeFalse();
        item.GetProperty("branches").GetInt32().ShouldBe(1);
    }

    [Fact]
    public async Task TxShow_OutputJson_HasTheTransactionItsBranchesAndItsTimeline()
    {
        var gid = LongGid("json-show");
        await StuckAsync(gid);

        var result = await CliRun.TxAsync("tx", "show", gid, "--output", "json", "--server", Server);

        result.ExitCode.ShouldBe(0, result.ToString());
        using var json = JsonDocument.Parse(result.Out);
        var root = json.RootElement;
        root.GetProperty("gid").GetString().ShouldBe(gid);
        root.GetProperty("status").GetString().ShouldBe("aborting");
        root.GetProperty("stuck").GetBoolean().ShouldBeTrue();
        root.GetProperty("stuckOn").GetProperty("op").GetString().ShouldBe("compensate");
        var s1 = root.GetProperty("branches").EnumerateArray().Single(b => b.GetProperty("name").GetString() == "s1");
        s1.GetProperty("ops").GetProperty("compensate").GetProperty("attempts").GetInt32().ShouldBe(2);
        var kinds = root.GetProperty("events").EnumerateArray().Select(e => e.GetProperty("kind").GetString()).ToList();
        kinds.ShouldContain("stuck");
        kinds.Count.ShouldBeGreaterThan(3, string.Join(", ", kinds));
    }

    [Fact]
    public async Task TxRetryAndAbort_OutputJson_AreTheTransactionAfterTheAction()
    {
        var stuck = LongGid("json-retry");
        await StuckAsync(stuck);
        var running = LongGid("json-abort");
        await Sagas.RetryingAsync(_coordinator.Client, _participant, running);

        var retry = await CliRun.TxAsync("tx", "retry", stuck, "-o", "json", "--server", Server);
        var abort = await CliRun.TxAsync("tx", "abort", running, "--reason", "test", "-o", "json", "--server", Server);

        retry.ExitCode.ShouldBe(0, retry.ToString());
        using (var json = JsonDocument.Parse(retry.Out))
        {
            json.RootElement.GetProperty("gid").GetString().ShouldBe(stuck);
            json.RootElement.GetProperty("stuck").GetBoolean().ShouldBeFalse(retry.Out);
        }

        abort.ExitCode.ShouldBe(0, abort.ToString());
        using (var json = JsonDocument.Parse(abort.Out))
        {
            json.RootElement.GetProperty("gid").GetString().ShouldBe(running);
            json.RootElement.GetProperty("status").GetString().ShouldBeOneOf("aborting", "aborted");
        }
    }

    [Fact]
    public async Task TxShow_UnknownGid_ErrorOnStandardErrorExitOne()
    {
        var result = await CliRun.TxAsync("tx", "show", "no-such-gid", "-o", "json", "--server", Server);

        result.ExitCode.ShouldBe(1, result.ToString());
        result.Out.ShouldBeEmpty();
        result.Error.ShouldContain("No transaction no-such-gid");
    }

    [Fact]
    public async Task TxAbort_CommittedTransaction_ProblemOnStandardErrorExitOne()
    {
        var gid = LongGid("abort-done");
        await CommittedAsync(gid);

        var result = await CliRun.TxAsync("tx", "abort", gid, "--server", Server);

        result.ExitCode.ShouldBe(1, result.ToString());
        result.Out.ShouldBeEmpty();
        result.Error.ShouldContain("409");
        result.Error.ShouldNotContain(Escape);
    }

    [Theory]
    [InlineData("tx", "list", "--no-such-option")]
    [InlineData("tx", "list", "--output", "xml")]
    [InlineData("tx", "show")]
    [InlineData("tx", "list", "--server", "not a url")]
    public async Task Tx_UsageError_ExitsTwo(params string[] args)
    {
        var result = await CliRun.TxAsync(args);

        result.ExitCode.ShouldBe(2, result.ToString());
        result.Error.ShouldNotBeEmpty();
    }

    /// <summary>A gid of ~90 characters: wider than a column of an 80-column table could hold.</summary>
    private static string LongGid(string what) => $"cli-{what}-{Guid.NewGuid():D}-{Guid.NewGuid():D}";

    [Fact]
    public async Task TxInstances_ListsTheCoordinatorHoldingTheUnfinishedTransaction_AsTextAndAsJson()
    {
        await CommittedAsync(LongGid("done"));
        var none = await CliRun.TxAsync("tx", "instances", "--server", Server, "-o", "json");
        none.ExitCode.ShouldBe(0, none.ToString());
        using (var json = JsonDocument.Parse(none.Out))
        {
            json.RootElement.GetProperty("instances").GetArrayLength().ShouldBe(0, "a finished transaction is nobody's");
        }

        await StuckAsync(LongGid("held"));

        var text = await CliRun.TxAsync("tx", "instances", "--server", Server);
        text.ExitCode.ShouldBe(0, text.ToString());
        text.Out.Split('\n').ShouldContain(line => line.Contains(Instance) && line.Contains("(this one)") && line.Contains(" 1 ") && line.Contains("live"), text.ToString());
        text.Out.ShouldContain($"1 instance(s) hold unfinished transactions; {Instance} answered.");
        var result = await CliRun.TxAsync("tx", "instances", "--server", Server, "-o", "json");
        result.ExitCode.ShouldBe(0, result.ToString());
        using var held = JsonDocument.Parse(result.Out);
        held.RootElement.GetProperty("self").GetString().ShouldBe(Instance);
        var instance = held.RootElement.GetProperty("instances").EnumerateArray().ShouldHaveSingleItem();
        instance.GetProperty("instance").GetString().ShouldBe(Instance);
        instance.GetProperty("held").GetInt64().ShouldBe(1);
        instance.GetProperty("expired").GetBoolean().ShouldBeFalse();
        instance.GetProperty("leaseUntil").GetDateTimeOffset().ShouldBeGreaterThan(DateTimeOffset.UtcNow);
    }

    private Task CommittedAsync(string gid) => Sagas.CommittedAsync(_coordinator.Client, _participant, gid);

    private Task StuckAsync(string gid) => Sagas.StuckAsync(_coordinator.Client, _participant, gid);
}
