using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Treaty.Client.Tests.Support;
using Treaty.Core.Contracts;
using Treaty.Testing;

namespace Treaty.Client.Tests;

/// <summary>The SDK against a real coordinator (Kestrel, SQLite) and a real participant, over real HTTP.</summary>
public sealed class TreatyClientTests(TreatyFixture fixture) : IClassFixture<TreatyFixture>
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly TreatyClient _client = fixture.Client;
    private readonly TinyParticipant _participant = fixture.Participant;

    private static string NewGid(string prefix) => TreatyFixture.NewGid(prefix);

    /// <summary>A transaction that keeps running: its only step answers 503 and is retried for a long time.</summary>
    private Task<TransactionView> SubmitLongRunningAsync(string gid) => _client.Saga(gid)
        .Step("s1", _participant.Unavailable, _participant.Ok)
        .WithRetry(1000, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1))
        .SubmitAsync();

    [Fact]
    public async Task SubmitWithWait_AllStepsAnswer200_ReturnsCommittedView()
    {
        var gid = NewGid("commit");
        using var payload = JsonDocument.Parse("""{"orderId":"o-1","amount":25.5}""");

        var view = await _client.Saga(gid)
            .WithPayload(payload.RootElement)
            .Step("reserve", _participant.Ok, _participant.Ok)
            .Step("charge", _participant.Ok, _participant.Ok)
            .Step("ship", _participant.Ok, pivot: true)
            .SubmitAsync(wait: TimeSpan.FromSeconds(10));

        view.Gid.ShouldBe(gid);
        view.Protocol.ShouldBe("saga");
        view.IsCommitted().ShouldBeTrue(view.Status);
        view.IsTerminal().ShouldBeTrue();
        view.IsAborted().ShouldBeFalse();
        view.Payload.GetProperty("orderId").GetString().ShouldBe("o-1");
        view.Branches.Select(b => b.Name).ShouldBe(["reserve", "charge", "ship"]);
        view.Branches.Select(b => b.Ops["action"].Status).ShouldAllBe(s => s == "succeeded");
        view.Branches.Single(b => b.Name == "ship").Pivot.ShouldBeTrue();
        _participant.CallsOf(gid, "ok").ShouldBe(3);
    }

    [Fact]
    public async Task SubmitWithWait_ActionAnswers409_ReturnsAbortedViewWithTheEarlierStepCompensated()
    {
        var gid = NewGid("abort");

        var view = await _client.Saga(gid)
            .Step("reserve", _participant.Ok, _participant.Ok)
            .Step("charge", _participant.Conflict, _participant.Ok)
            .SubmitAsync(wait: TimeSpan.FromSeconds(10));

        view.IsAborted().ShouldBeTrue(view.Status);
        view.IsTerminal().ShouldBeTrue();
        view.IsCommitted().ShouldBeFalse();
        var charge = view.Branches.Single(b => b.Name == "charge").Ops["action"];
        charge.LastStatusCode.ShouldBe(409);
        charge.Attempts.ShouldBe(1); // a 4xx is definitive: not retried.
        view.Branches.Single(b => b.Name == "reserve").Ops["compensate"].Status.ShouldBe("succeeded");
        _participant.CallsOf(gid, "conflict").ShouldBe(1);
    }

    [Fact]
    public async Task Summaries_OfTerminalTransactions_AnswerTheTypedQuestions()
    {
        var committed = NewGid("sum-c");
        var aborted = NewGid("sum-a");
        await _client.Saga(committed).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));
        await _client.Saga(aborted).Step("s1", _participant.Conflict, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var items = new List<TransactionSummaryView>();
        await foreach (var item in _client.ListAllAsync(new TransactionListQuery { Limit = 100 }))
        {
            items.Add(item);
        }

        var c = items.Single(i => i.Gid == committed);
        (c.IsCommitted(), c.IsAborted(), c.IsTerminal()).ShouldBe((true, false, true));
        var a = items.Single(i => i.Gid == aborted);
        (a.IsCommitted(), a.IsAborted(), a.IsTerminal()).ShouldBe((false, true, true));
    }

    [Fact]
    public async Task Submit_ActionAnswers503UntilAttemptsRunOut_RetriesThenAborts()
    {
        var gid = NewGid("retry");

        var submitted = await _client.Saga(gid)
            .Step("s1", _participant.Unavailable, _participant.Ok)
            .WithRetry(3, TimeSpan.FromMilliseconds(50), TimeSpan.FromMilliseconds(100))
            .SubmitAsync();
        var done = await _client.WaitAsync(gid, Patience);

        submitted.Gid.ShouldBe(gid);
        done.IsAborted().ShouldBeTrue(done.Status);
        var action = done.Branches.Single().Ops["action"];
        action.Attempts.ShouldBe(3);
        action.LastStatusCode.ShouldBe(503);
        _participant.CallsOf(gid, "unavailable").ShouldBe(3);
    }

    [Fact]
    public async Task SubmitWithoutWait_ThenWaitAsync_ReturnsTheTerminalView()
    {
        var gid = NewGid("wait");

        await _client.Saga(gid)
            .Step("s1", _participant.Ok, _participant.Ok)
            .Step("s2", _participant.Ok, _participant.Ok)
            .SubmitAsync();
        var view = await _client.WaitAsync(gid, Patience);

        view.Gid.ShouldBe(gid);
        view.IsTerminal().ShouldBeTrue(view.Status);
        view.IsCommitted().ShouldBeTrue(view.Status);
        view.Branches.ShouldAllBe(b => b.Ops["action"].Status == "succeeded");
    }

    [Fact]
    public async Task WaitAsync_TimeoutPassesFirst_ReturnsTheRunningView()
    {
        var gid = NewGid("wait-short");
        await SubmitLongRunningAsync(gid);

        var view = await _client.WaitAsync(gid, TimeSpan.FromMilliseconds(300));

        view.Gid.ShouldBe(gid);
        view.IsTerminal().ShouldBeFalse(view.Status);
        await _client.AbortAsync(gid, "test cleanup");
    }

    [Fact]
    public async Task WaitAsync_UnknownGid_ThrowsNotFound()
    {
        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.WaitAsync(NewGid("nowhere"), Patience));

        ex.StatusCode.ShouldBe(404);
        ex.Type.ShouldBe(ProblemTypes.NotFound);
    }

    [Fact]
    public async Task AbortAsync_RunningTransaction_AbortsItWithTheReasonInTheTimeline()
    {
        var gid = NewGid("op-abort");
        await SubmitLongRunningAsync(gid);

        var aborting = await _client.AbortAsync(gid, "customer cancelled");
        var done = await _client.WaitAsync(gid, Patience);

        aborting.Gid.ShouldBe(gid);
        done.IsAborted().ShouldBeTrue(done.Status);
        var events = (await _client.GetEventsAsync(gid)).Events;
        events.ShouldContain(e => e.Kind == "operator-abort" && e.Detail != null && e.Detail.Contains("customer cancelled"));
    }

    [Fact]
    public async Task GetAsync_UnknownGid_ReturnsNull()
    {
        (await _client.GetAsync(NewGid("unknown"))).ShouldBeNull();
    }

    [Fact]
    public async Task GetAsync_KnownGid_ReturnsTheSubmittedTransaction()
    {
        var gid = NewGid("get");
        await _client.Saga(gid).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var view = (await _client.GetAsync(gid)).ShouldNotBeNull();

        view.Gid.ShouldBe(gid);
        view.IsCommitted().ShouldBeTrue(view.Status);
        view.Branches.Single().Ops["action"].Url.ShouldBe(_participant.Ok);
    }

    [Fact]
    public async Task GetEventsAsync_CommittedSaga_HasTheTimelineInOrder()
    {
        var gid = NewGid("events");
        await _client.Saga(gid)
            .Step("s1", _participant.Ok, _participant.Ok)
            .Step("s2", _participant.Ok, _participant.Ok)
            .SubmitAsync(TimeSpan.FromSeconds(10));

        var timeline = await _client.GetEventsAsync(gid);

        timeline.Gid.ShouldBe(gid);
        var events = timeline.Events;
        events[0].Kind.ShouldBe("submitted");
        events[^1].Kind.ShouldBe("committed");
        events.Select(e => e.Sequence).ShouldBeInOrder(SortDirection.Ascending);
        events.Select(e => e.Sequence).ShouldBeUnique();
        foreach (var branch in new[] { "s1", "s2" })
        {
            events.ShouldContain(e => e.Kind == "attempt-started" && e.Branch == branch && e.Op == "action" && e.Attempt == 1);
            events.ShouldContain(e => e.Kind == "attempt-succeeded" && e.Branch == branch && e.Op == "action" && e.StatusCode == 200);
        }

        // s2 depends on s1: it starts only after s1 succeeded.
        var s1Done = events.First(e => e.Kind == "attempt-succeeded" && e.Branch == "s1").Sequence;
        var s2Start = events.First(e => e.Kind == "attempt-started" && e.Branch == "s2").Sequence;
        s2Start.ShouldBeGreaterThan(s1Done);
    }

    [Fact]
    public async Task GetEventsAsync_UnknownGid_ThrowsNotFound()
    {
        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.GetEventsAsync(NewGid("unknown")));

        ex.StatusCode.ShouldBe(404);
        ex.Type.ShouldBe(ProblemTypes.NotFound);
    }

    [Fact]
    public async Task RetryAsync_CommittedTransaction_Throws409InvalidState()
    {
        var gid = NewGid("retry-done");
        await _client.Saga(gid).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.RetryAsync(gid));

        ex.StatusCode.ShouldBe(409);
        ex.Problem.Type.ShouldEndWith("invalid-state");
        ex.Problem.Status.ShouldBe(409);
        ex.Detail.ShouldNotBeNull().ShouldContain("committed");
        ex.IsTransient.ShouldBeFalse();
    }

    [Fact]
    public async Task AbortAsync_UnknownGid_Throws404()
    {
        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.AbortAsync(NewGid("unknown"), "why not"));

        ex.StatusCode.ShouldBe(404);
        ex.Problem.Type.ShouldEndWith("not-found");
        ex.Title.ShouldNotBeNullOrWhiteSpace();
    }

    [Fact]
    public async Task RetryAsync_UnknownGid_Throws404()
    {
        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.RetryAsync(NewGid("unknown")));

        ex.StatusCode.ShouldBe(404);
    }

    [Fact]
    public async Task Submit_StepWithNonHttpUrl_Throws400NamingTheField()
    {
        var gid = NewGid("invalid");

        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.Saga(gid)
            .Step("s1", _participant.Ok, _participant.Ok)
            .Step("s2", "ftp://files.example/upload", _participant.Ok)
            .SubmitAsync());

        ex.StatusCode.ShouldBe(400);
        ex.Type.ShouldBe(ProblemTypes.Validation);
        var errors = ex.Errors.ShouldNotBeNull();
        errors.Keys.ShouldBe(["branches[1].action"]);
        errors["branches[1].action"].ShouldNotBeEmpty();
        ex.Message.ShouldContain("branches[1].action");
        ex.IsTransient.ShouldBeFalse();
        (await _client.GetAsync(gid)).ShouldBeNull();
    }

    [Fact]
    public async Task Submit_SameGidDifferentBody_Throws409GidConflict()
    {
        var gid = NewGid("conflict");
        await _client.Saga(gid).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.Saga(gid).Step("other", _participant.Ok, _participant.Ok).SubmitAsync());

        ex.StatusCode.ShouldBe(409);
        ex.Problem.Type.ShouldEndWith("gid-conflict");
        ex.Detail.ShouldNotBeNull().ShouldContain(gid);
    }

    [Fact]
    public async Task Submit_SameGidSameBody_ReturnsTheExistingTransaction()
    {
        var gid = NewGid("again");
        SagaBuilder Saga() => _client.Saga(gid).Step("s1", _participant.Ok, _participant.Ok);
        var first = await Saga().SubmitAsync(TimeSpan.FromSeconds(10));

        var second = await Saga().SubmitAsync(TimeSpan.FromSeconds(10));

        second.Gid.ShouldBe(first.Gid);
        second.IsCommitted().ShouldBeTrue(second.Status);
        second.CreatedAt.ShouldBe(first.CreatedAt);
        _participant.CallsOf(gid, "ok").ShouldBe(1);
    }

    [Fact]
    public async Task Submit_WithoutGid_GetsOneFromTheCoordinator()
    {
        var view = await _client.Saga().Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));

        view.Gid.ShouldNotBeNullOrWhiteSpace();
        (await _client.GetAsync(view.Gid)).ShouldNotBeNull().IsCommitted().ShouldBeTrue();
    }

    [Fact]
    public async Task Call_WithCancelledToken_ThrowsOperationCanceled()
    {
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => _client.GetAsync(NewGid("any"), cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            _client.Saga(NewGid("never")).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(cancellationToken: cancelled.Token));
    }

    [Fact]
    public async Task WaitAsync_TokenCancelledWhileWaiting_ThrowsOperationCanceled()
    {
        var gid = NewGid("cancel");
        await SubmitLongRunningAsync(gid);
        using var soon = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => _client.WaitAsync(gid, Patience, soon.Token));

        await _client.AbortAsync(gid, "test cleanup");
    }

    [Fact]
    public async Task Call_ToClosedPort_ThrowsHttpRequestExceptionNotApiException()
    {
        using var client = new TreatyClient(new Uri($"http://127.0.0.1:{ClosedPort()}"));

        var ex = await Should.ThrowAsync<HttpRequestException>(() => client.GetAsync("any"));
        ex.ShouldNotBeAssignableTo<TreatyApiException>();
        await Should.ThrowAsync<HttpRequestException>(() => client.Saga("g").Step("s1", "http://127.0.0.1/a").SubmitAsync());
    }

    [Fact]
    public async Task AddTreatyClient_RegistersAUsableSingleton()
    {
        var services = new ServiceCollection();
        services.AddTreatyClient(fixture.Coordinator.BaseAddress);
        await using var provider = services.BuildServiceProvider();

        var client = provider.GetRequiredService<TreatyClient>();
        provider.GetRequiredService<TreatyClient>().ShouldBeSameAs(client);
        client.BaseAddress.ShouldBe(fixture.Coordinator.BaseAddress);

        var gid = NewGid("di");
        var view = await client.Saga(gid).Step("s1", _participant.Ok, _participant.Ok).SubmitAsync(TimeSpan.FromSeconds(10));
        view.IsCommitted().ShouldBeTrue(view.Status);
        (await client.GetAsync(gid)).ShouldNotBeNull().Gid.ShouldBe(gid);
    }

    [Fact]
    public async Task AddTreatyClient_WithRegisteredTimeProvider_WaitsOnThatClock()
    {
        var gid = NewGid("di-clock");
        await SubmitLongRunningAsync(gid);
        var clock = new ManualTimeProvider();
        var services = new ServiceCollection();
        services.AddSingleton<TimeProvider>(clock);
        services.AddTreatyClient(fixture.Coordinator.BaseAddress);
        await using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<TreatyClient>();

        // An hour on the manual clock: only the manual clock can end this wait within the test.
        var wait = client.WaitAsync(gid, TimeSpan.FromHours(1));
        var started = TimeProvider.System.GetTimestamp();
        while (!wait.IsCompleted && TimeProvider.System.GetElapsedTime(started) < Patience)
        {
            clock.Advance(TimeSpan.FromHours(2));
            await Task.Delay(TimeSpan.FromMilliseconds(20));
        }

        wait.IsCompleted.ShouldBeTrue("the wait did not follow the registered clock");
        var view = await wait;
        view.Gid.ShouldBe(gid);
        view.IsTerminal().ShouldBeFalse(view.Status);
        await _client.AbortAsync(gid, "test cleanup");
    }

    [Fact]
    public void AddTreatyClient_RelativeAddress_ThrowsNamingCoordinator()
    {
        Should.Throw<ArgumentException>(() => new ServiceCollection().AddTreatyClient(new Uri("/treaty", UriKind.Relative)))
            .ParamName.ShouldBe("coordinator");
    }

    [Fact]
    public async Task Client_WithBaseAddressPath_KeepsThePath()
    {
        // The coordinator serves /api/v1 at the root, so a base with a path answers 404 — proving the path was kept.
        using var client = new TreatyClient(new Uri(fixture.Coordinator.BaseAddress, "prefix"));

        client.BaseAddress.AbsoluteUri.ShouldEndWith("/prefix/");
        var ex = await Should.ThrowAsync<TreatyApiException>(() => client.ListAsync());
        ex.StatusCode.ShouldBe((int)HttpStatusCode.NotFound);
    }

    private static int ClosedPort()
    {
        // Bind a free port, then release it: nothing listens there afterwards.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
