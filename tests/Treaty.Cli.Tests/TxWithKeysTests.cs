using System.Text.Json;
using Treaty.Cli.Tests.Support;
using Treaty.Client;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>
/// <c>treaty tx ...</c> against a coordinator with keys (docs/security.md): a client key reads, an
/// operator key also retries and aborts and is the actor in the timeline; without a key or with a
/// client key on an operator action the CLI says why and exits 1, and no secret is ever printed.
/// </summary>
public sealed class TxWithKeysTests : IAsyncLifetime
{
    private const string ClientSecret = "cli-client-secret-0123456789";
    private const string OperatorSecret = "cli-operator-secret-0123456789";
    private InProcessCoordinator _coordinator = null!;
    private TinyParticipant _participant = null!;
    private TreatyClient _client = null!;

    private string Server => _coordinator.BaseAddress.AbsoluteUri;

    public async Task InitializeAsync()
    {
        _coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-cli-keys", configureOptions: options =>
        {
            options.ApiKeys.Add("app:" + ClientSecret);
            options.OperatorKeys.Add("ops:" + OperatorSecret);
        });
        _participant = await TinyParticipant.StartAsync();
        _client = new TreatyClient(_coordinator.BaseAddress, ClientSecret);
    }

    public async Task DisposeAsync()
    {
        _client.Dispose();
        await _participant.DisposeAsync();
        await _coordinator.DisposeAsync();
    }

    [Fact]
    public async Task ClientKeyFlag_ListsAndShows()
    {
        var gid = NewGid("read");
        await Sagas.CommittedAsync(_client, _participant, gid);

        var list = await CliRun.TxAsync("tx", "list", "--server", Server, "--api-key", ClientSecret);
        var show = await CliRun.TxAsync("tx", "show", gid, "-o", "json", "--server", Server, "--api-key", ClientSecret);
        var showText = await CliRun.TxAsync("tx", "show", gid, "--server", Server, "--api-key", ClientSecret);

        list.ExitCode.ShouldBe(0, list.ToString());
        list.Out.Split('\n').ShouldContain(line => line.Contains(gid) && line.Contains("committed"), list.ToString());
        show.ExitCode.ShouldBe(0, show.ToString());
        using (var json = JsonDocument.Parse(show.Out))
        {
            json.RootElement.GetProperty("gid").GetString().ShouldBe(gid);
            json.RootElement.GetProperty("status").GetString().ShouldBe("committed");
            json.RootElement.GetProperty("events").GetArrayLength().ShouldBeGreaterThan(0);
        }

        showText.ExitCode.ShouldBe(0, showText.ToString());
        showText.Out.ShouldStartWith(gid + " saga committed", customMessage: showText.ToString());
        NoSecretIn(list, show, showText);
    }

    [Fact]
    public async Task ClientKeyFromTheEnvironment_ListsAsAProcess()
    {
        var gid = NewGid("env");
        await Sagas.CommittedAsync(_client, _participant, gid);

        var result = await CliRun.ProcessAsync(
            ["tx", "list", "--server", Server],
            environment: new Dictionary<string, string?> { [TxCommands.ApiKeyVariable] = ClientSecret });

        result.ExitCode.ShouldBe(0, result.ToString());
        result.Out.Split('\n').ShouldContain(line => line.Contains(gid) && line.Contains("committed"), result.ToString());
        NoSecretIn(result);
    }

    [Fact]
    public async Task NoKey_SaysAKeyIsNeededAndHowToGiveIt_ExitOne_NoStackTrace()
    {
        // A process without TREATY_API_KEY, whatever the test runner's environment holds.
        var result = await CliRun.ProcessAsync(
            ["tx", "list", "--server", Server],
            environment: new Dictionary<string, string?> { [TxCommands.ApiKeyVariable] = null });

        result.ExitCode.ShouldBe(1, result.ToString());
        result.Out.ShouldBeEmpty(result.ToString());
        result.Error.ShouldContain("401 Unauthorized", customMessage: result.ToString());
        result.Error.ShouldContain("needs a key", customMessage: result.ToString());
        result.Error.ShouldContain(TxCommands.ApiKeyOption, customMessage: result.ToString());
        result.Error.ShouldContain(TxCommands.ApiKeyVariable, customMessage: result.ToString());
        result.Error.ShouldNotContain("Exception", customMessage: result.ToString());
        result.Error.ShouldNotContain("   at ", customMessage: result.ToString());
    }

    [Fact]
    public async Task WrongKey_SaysTheKeyWasRefused_ExitOne_WithoutPrintingIt()
    {
        const string wrong = "not-a-key-of-this-coordinator-42";

        var result = await CliRun.TxAsync("tx", "list", "--server", Server, "--api-key", wrong);

        result.ExitCode.ShouldBe(1, result.ToString());
        result.Out.ShouldBeEmpty(result.ToString());
        result.Error.ShouldContain("401 Unauthorized", customMessage: result.ToString());
        result.Error.ShouldContain($"refused the key given with {TxCommands.ApiKeyOption}", customMessage: result.ToString());
        result.Error.ShouldNotContain(wrong, customMessage: result.ToString());
        result.Error.ShouldNotContain("Exception", customMessage: result.ToString());
    }

    [Fact]
    public async Task ClientKey_RetryAndAbort_Are403WithTheReason_ExitOne_NothingChanged()
    {
        var stuck = NewGid("c-retry");
        var running = NewGid("c-abort");
        await Sagas.StuckAsync(_client, _participant, stuck);
        await Sagas.RetryingAsync(_client, _participant, running);
        await WaitUntilAsync(running, v => v.Status == "running" && v.Branches.Single().Ops["action"].Attempts >= 1);
        var stuckBefore = (await _client.GetAsync(stuck)).ShouldNotBeNull();

        var retry = await CliRun.TxAsync("tx", "retry", stuck, "--server", Server, "--api-key", ClientSecret);
        var abort = await CliRun.TxAsync("tx", "abort", running, "--reason", "not allowed", "--server", Server, "--api-key", ClientSecret);

        foreach (var result in new[] { retry, abort })
        {
            result.ExitCode.ShouldBe(1, result.ToString());
            result.Out.ShouldBeEmpty(result.ToString());
            result.Error.ShouldContain("403 Forbidden", customMessage: result.ToString());
            result.Error.ShouldContain("key:app is a client key", customMessage: result.ToString());
            result.Error.ShouldContain("needs an operator key", customMessage: result.ToString());
            result.Error.ShouldNotContain("Exception", customMessage: result.ToString());
        }

        NoSecretIn(retry, abort);
        var stuckAfter = (await _client.GetAsync(stuck)).ShouldNotBeNull();
        stuckAfter.Status.ShouldBe("aborting");
        stuckAfter.Stuck.ShouldBeTrue();
        stuckAfter.Branches.Single(b => b.Name == "s1").Ops["compensate"].Attempts.ShouldBe(stuckBefore.Branches.Single(b => b.Name == "s1").Ops["compensate"].Attempts);
        (await _client.GetEventsAsync(stuck)).Events.ShouldNotContain(e => e.Kind.StartsWith("operator-", StringComparison.Ordinal));
        (await _client.GetAsync(running)).ShouldNotBeNull().Status.ShouldBe("running");
        (await _client.GetEventsAsync(running)).Events.ShouldNotContain(e => e.Kind.StartsWith("operator-", StringComparison.Ordinal));
    }

    [Fact]
    public async Task OperatorKey_RetriesAndAborts_TheTimelineNamesTheKey_NeverItsSecret()
    {
        var stuck = NewGid("o-retry");
        var running = NewGid("o-abort");
        await Sagas.StuckAsync(_client, _participant, stuck);
        await Sagas.RetryingAsync(_client, _participant, running);

        var retry = await CliRun.TxAsync("tx", "retry", stuck, "--server", Server, "--api-key", OperatorSecret);
        // The NAME:SECRET form is a key too.
        var abort = await CliRun.TxAsync("tx", "abort", running, "--reason", "customer left", "--server", Server, "--api-key", "ops:" + OperatorSecret);
        await WaitUntilAsync(running, v => v.Status == "aborted");
        var retried = await CliRun.TxAsync("tx", "show", stuck, "-o", "json", "--server", Server, "--api-key", OperatorSecret);
        var aborted = await CliRun.TxAsync("tx", "show", running, "-o", "json", "--server", Server, "--api-key", ClientSecret);
        var abortedText = await CliRun.TxAsync("tx", "show", running, "--server", Server, "--api-key", ClientSecret);

        retry.ExitCode.ShouldBe(0, retry.ToString());
        retry.Out.ShouldContain($"Retry accepted: {stuck}", customMessage: retry.ToString());
        abort.ExitCode.ShouldBe(0, abort.ToString());
        abort.Out.ShouldContain($"Abort accepted: {running}", customMessage: abort.ToString());
        OperatorEvent(retried, "operator-retry").ShouldContain("key:ops");
        var abortDetail = OperatorEvent(aborted, "operator-abort");
        abortDetail.ShouldContain("key:ops");
        abortDetail.ShouldContain("customer left");
        abortedText.Out.Split('\n').ShouldContain(line => line.Contains("operator-abort") && line.Contains("key:ops"), abortedText.ToString());
        NoSecretIn(retry, abort, retried, aborted, abortedText);
    }

    private static string NewGid(string what) => $"cli-keys-{what}-{Guid.NewGuid():N}";

    /// <summary>The detail of the one <paramref name="kind"/> event in a <c>tx show -o json</c>.</summary>
    private static string OperatorEvent(CliResult show, string kind)
    {
        show.ExitCode.ShouldBe(0, show.ToString());
        using var json = JsonDocument.Parse(show.Out);
        var events = json.RootElement.GetProperty("events").EnumerateArray().Where(e => e.GetProperty("kind").GetString() == kind).ToList();
        events.Count.ShouldBe(1, show.Out);
        return events[0].GetProperty("detail").GetString().ShouldNotBeNull();
    }

    private static void NoSecretIn(params CliResult[] results)
    {
        foreach (var result in results)
        {
            result.ToString().ShouldNotContain(ClientSecret);
            result.ToString().ShouldNotContain(OperatorSecret);
        }
    }

    private async Task WaitUntilAsync(string gid, Func<Core.Contracts.TransactionView, bool> condition)
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (await _client.GetAsync(gid, deadline.Token) is not { } view || !condition(view))
        {
            await Task.Delay(50, deadline.Token);
        }
    }
}
