using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Playwright;
using Treaty.Dashboard.Tests.Support;
using static Microsoft.Playwright.Assertions;

namespace Treaty.Dashboard.Tests;

/// <summary>
/// The dashboard in a real browser (Debian's chromium through Playwright): transactions created
/// through the API appear on the page, one opens with its graph and timeline, and an operator
/// retries a stuck one and watches it finish.
/// </summary>
public sealed class DashboardTests(DashboardFixture fixture) : IClassFixture<DashboardFixture>, IAsyncLifetime
{
    private IBrowserContext _context = null!;
    private IPage _page = null!;
    private List<string> _errors = null!;

    public async Task InitializeAsync()
    {
        SetDefaultExpectTimeout(20_000);
        (_context, _page, _errors) = await fixture.Browser.NewPageAsync(fixture.Coordinator.BaseAddress);
    }

    public async Task DisposeAsync()
    {
        await _context.CloseAsync();
        // No uncaught script error and no Content-Security-Policy violation in any test.
        _errors.ShouldBeEmpty();
    }

    [Fact]
    public async Task List_ShowsTransactionsCreatedThroughTheApi_AndNewOnesWithoutAReload()
    {
        var tag = DashboardFixture.NewGid("list");
        await SubmitSagaAsync($"{tag}-a");
        await SubmitSagaAsync($"{tag}-b");
        fixture.Participant.Fail($"{tag}-no/only/action", 409);
        await fixture.SubmitAsync("saga", $"{tag}-no", [fixture.Branch($"{tag}-no", "only", ["action", "compensate"])]);

        await _page.GotoAsync("/");

        await Expect(Row($"{tag}-a")).ToBeVisibleAsync();
        await Expect(Row($"{tag}-b").Locator("[data-status]")).ToHaveTextAsync("committed");
        await Expect(Row($"{tag}-no").Locator("[data-status]")).ToHaveTextAsync("aborted");
        var committedBefore = int.Parse(await _page.Locator("[data-count=committed] .n").TextContentAsync() ?? "", System.Globalization.CultureInfo.InvariantCulture);
        committedBefore.ShouldBeGreaterThanOrEqualTo(2);
        var navigations = 0;
        _page.FrameNavigated += (_, frame) => navigations += frame == _page.MainFrame ? 1 : 0;

        // Live: a transaction submitted now shows up, and the count moves, with no reload.
        await SubmitSagaAsync($"{tag}-c");

        await Expect(Row($"{tag}-c")).ToBeVisibleAsync();
        await Expect(_page.Locator("[data-count=committed] .n")).ToHaveTextAsync((committedBefore + 1).ToString(System.Globalization.CultureInfo.InvariantCulture));
        navigations.ShouldBe(0);
        await BrowserSession.ScreenshotAsync(_page, "dashboard-list.png");
    }

    [Fact]
    public async Task List_Filters_NarrowTheRowsAndTheCounts()
    {
        var tag = DashboardFixture.NewGid("filter");
        await SubmitSagaAsync($"{tag}-one");
        await SubmitSagaAsync($"{tag}-two");
        await fixture.SubmitAsync("tcc", $"{tag}-tcc", [fixture.Branch($"{tag}-tcc", "hold", ["try", "confirm", "cancel"])]);
        await _page.GotoAsync("/");

        await _page.FillAsync("#filter-gid", $"{tag}-t");

        await Expect(_page.Locator("#tx-rows tr")).ToHaveCountAsync(2);
        await Expect(Row($"{tag}-two")).ToBeVisibleAsync();
        await Expect(_page.Locator("[data-count=all] .n")).ToHaveTextAsync("2");

        await _page.SelectOptionAsync("#filter-protocol", "tcc");

        await Expect(_page.Locator("#tx-rows tr")).ToHaveCountAsync(1);
        await Expect(Row($"{tag}-tcc")).ToBeVisibleAsync();
        await Expect(_page.Locator("[data-count=committed] .n")).ToHaveTextAsync("1");
        // The filters are kept in the address (and survive a reload); nothing else is.
        _page.Url.ShouldContain($"gid={tag}-t");
        _page.Url.ShouldContain("protocol=tcc");

        await _page.SelectOptionAsync("#filter-protocol", "");
        await _page.SelectOptionAsync("#filter-status", "committed");
        await _page.FillAsync("#filter-until", "2000-01-01T00:00");

        await Expect(_page.Locator("#tx-rows td.empty")).ToHaveTextAsync("No transactions match.");
        await Expect(_page.Locator("[data-count=all] .n")).ToHaveTextAsync("0");

        await _page.ClickAsync("#filter-clear");

        await Expect(Row($"{tag}-one")).ToBeVisibleAsync();
        await Expect(_page.Locator("#filter-gid")).ToHaveValueAsync("");
        _page.Url.ShouldEndWith("#/");
    }

    [Fact]
    public async Task Transaction_ShowsTheDagColouredByStateAndEveryAttemptInTheTimeline()
    {
        var gid = DashboardFixture.NewGid("dag");
        fixture.Participant.Delay($"{gid}/pay/action", TimeSpan.FromMilliseconds(150));
        var ops = new[] { "action", "compensate" };
        await fixture.SubmitAsync("saga", gid,
        [
            fixture.Branch(gid, "order", ops, dependsOn: []),
            fixture.Branch(gid, "pay", ops, dependsOn: ["order"]),
            fixture.Branch(gid, "stock", ops, dependsOn: ["order"]),
            fixture.Branch(gid, "ship", ops, dependsOn: ["pay", "stock"]),
        ]);
        await _page.GotoAsync("/");

        await Row(gid).Locator("a.gid").ClickAsync();

        await Expect(_page.Locator("#tx-gid")).ToHaveTextAsync(gid);
        _page.Url.ShouldEndWith($"#/tx/{gid}");
        var nodes = _page.Locator("svg.graph g.node");
        await Expect(nodes).ToHaveCountAsync(4);
        foreach (var branch in new[] { "order", "pay", "stock", "ship" })
        {
            await Expect(_page.Locator($"svg.graph g.node[data-branch={branch}]")).ToHaveAttributeAsync("data-status", "succeeded");
            await Expect(_page.Locator($"svg.graph g.node[data-branch={branch}]")).ToHaveClassAsync(new Regex("tone-ok"));
        }

        await Expect(_page.Locator("svg.graph path.edge")).ToHaveCountAsync(4);
        await Expect(_page.Locator("svg.graph path.edge[data-from=order][data-to=pay]")).ToHaveCountAsync(1);
        await Expect(_page.Locator("svg.graph path.edge[data-from=stock][data-to=ship]")).ToHaveCountAsync(1);
        // The DAG's depth is the x position: order, then pay and stock side by side, then ship.
        (await X("order")).ShouldBeLessThan(await X("pay"));
        (await X("pay")).ShouldBe(await X("stock"));
        (await X("stock")).ShouldBeLessThan(await X("ship"));

        var answered = _page.Locator("#timeline tr[data-kind=attempt-succeeded]");
        await Expect(answered).ToHaveCountAsync(4);
        var pay = _page.Locator("#timeline tr[data-kind=attempt-succeeded]", new() { HasText = "pay · action" });
        var latency = await pay.Locator("td.latency").TextContentAsync();
        int.Parse(latency!.Replace(" ms", "", StringComparison.Ordinal), System.Globalization.CultureInfo.InvariantCulture).ShouldBeGreaterThanOrEqualTo(150);
        await pay.Locator("details[data-body$=res] summary").ClickAsync();
        await Expect(pay.Locator("details[data-body$=res] pre")).ToContainTextAsync($"/{gid}/pay/action");
        var started = _page.Locator("#timeline tr[data-kind=attempt-started]", new() { HasText = "ship · action" });
        await started.Locator("details[data-body$=req] summary").ClickAsync();
        await Expect(started.Locator("details[data-body$=req] pre")).ToContainTextAsync("\"orderId\": \"" + gid + "\"");
        await Expect(_page.Locator("#timeline tr[data-kind=committed]")).ToHaveCountAsync(1);
        await BrowserSession.ScreenshotAsync(_page, "dashboard-transaction.png");
    }

    [Fact]
    public async Task Transaction_Choreography_ShowsTheReportedServicesAsAFlowAndEveryEventInTheTimeline()
    {
        var gid = DashboardFixture.NewGid("choreo");
        Treaty.Core.Contracts.ChoreographyEventRequest Event(string id, string type, string service, string? outcome = null) =>
            new(id, type, service, gid) { Outcome = outcome, Payload = System.Text.Json.JsonSerializer.SerializeToElement(new Dictionary<string, string> { ["orderId"] = gid }) };
        await fixture.Coordinator.Client.ReportEventsAsync(
        [
            Event("m1", "order.created", "order"),
            Event("m2", "payment.reserved", "payment"),
            Event("m3", "inventory.reserved", "inventory"),
            Event("m4", "order.confirmed", "order", "completed"),
        ]);

        await _page.GotoAsync($"/#/tx/{gid}");

        await Expect(_page.Locator("#tx-protocol")).ToHaveTextAsync("choreography");
        await Expect(_page.Locator("svg.graph g.node")).ToHaveCountAsync(3);
        await Expect(_page.Locator("svg.graph path.edge[data-from=order][data-to=payment]")).ToHaveCountAsync(1);
        await Expect(_page.Locator("svg.graph path.edge[data-from=payment][data-to=inventory]")).ToHaveCountAsync(1);
        var events = _page.Locator("#timeline tr[data-kind=event]");
        await Expect(events).ToHaveCountAsync(4);
        var payment = events.Filter(new() { HasText = "payment · payment.reserved" });
        await payment.Locator("details summary").ClickAsync();
        await Expect(payment.Locator("details pre")).ToContainTextAsync(gid);
        await Expect(_page.Locator("#timeline tr[data-kind=committed]")).ToHaveCountAsync(1);
        await Expect(_page.Locator("#branches tr[data-branch=order]")).ToHaveCountAsync(2);
    }

    [Fact]
    public async Task Stuck_AChoreographyWithoutItsNextEvent_IsInTheStuckView_AndTheOperatorAbortsIt()
    {
        var gid = DashboardFixture.NewGid("choreostuck");
        await fixture.Coordinator.Client.ReportEventsAsync(
        [
            new Treaty.Core.Contracts.ChoreographyEventRequest("m1", "order.created", "order", gid),
            new Treaty.Core.Contracts.ChoreographyEventRequest("m2", "payment.reserved", "payment", gid) { TimeoutMs = 200 },
        ]);
        await fixture.WaitForAsync(gid, tx => tx["stuck"]!.GetValue<bool>(), "stuck");

        await _page.GotoAsync("/#/stuck");

        var row = _page.Locator($"#stuck-rows tr[data-gid='{gid}']");
        await Expect(row).ToContainTextAsync("payment.next-event");
        await Expect(row).ToContainTextAsync("no next event within its timeout");
        var abort = row.Locator("button[data-action=abort]");
        await abort.ClickAsync();
        await abort.ClickAsync(); // the second click confirms

        await Expect(row).ToHaveCountAsync(0);
        await fixture.WaitForAsync(gid, tx => tx["status"]!.GetValue<string>() == "aborted", "aborted");
        await _page.GotoAsync($"/#/tx/{gid}");
        await Expect(_page.Locator("#timeline tr[data-kind=operator-abort]")).ToContainTextAsync("nothing to call");
    }

    [Fact]
    public async Task Transaction_TwoPhaseCommit_ShowsEveryVoteAndTheDecision()
    {
        var gid = DashboardFixture.NewGid("2pc");
        fixture.Participant.Fail($"{gid}/bank/prepare", 409);
        // A 2PC aborts at its first NO without waiting for the other votes: the NO comes last so
        // that both votes are in the timeline (CI once saw only the NO).
        fixture.Participant.Delay($"{gid}/bank/prepare", TimeSpan.FromMilliseconds(500));
        await fixture.SubmitAsync("2pc", gid,
        [
            fixture.Branch(gid, "shop", ["prepare", "commit", "rollback"]),
            fixture.Branch(gid, "bank", ["prepare", "commit", "rollback"]),
        ]);
        await fixture.WaitForAsync(gid, tx => tx["status"]!.GetValue<string>() == "aborted", "aborted");

        await _page.GotoAsync($"/#/tx/{gid}");

        await Expect(_page.Locator("#tx-decision")).ToHaveTextAsync("abort");
        var votes = _page.Locator("#timeline tr[data-kind=vote]");
        await Expect(votes).ToHaveCountAsync(2);
        await Expect(votes.Filter(new() { HasText = "shop" })).ToContainTextAsync("yes");
        await Expect(votes.Filter(new() { HasText = "bank" })).ToContainTextAsync("no");
        await Expect(_page.Locator("#timeline tr[data-kind=aborting]")).ToHaveCountAsync(1);
        await Expect(_page.Locator("svg.graph g.node[data-branch=bank]")).ToHaveClassAsync(new Regex("tone-bad"));
        await Expect(_page.Locator("svg.graph g.node[data-branch=bank] text.state")).ToContainTextAsync("vote no");
        await Expect(_page.Locator("#tx-actions button")).ToHaveCountAsync(0);
    }

    [Fact]
    public async Task Transaction_ThreePhaseCommit_ShowsVotesPhasesAndTheCommit()
    {
        var gid = DashboardFixture.NewGid("3pc");
        string[] ops = ["canCommit", "preCommit", "doCommit", "abort"];
        await fixture.SubmitAsync("3pc", gid, [fixture.Branch(gid, "shop", ops), fixture.Branch(gid, "bank", ops)]);
        await fixture.WaitForAsync(gid, tx => tx["status"]!.GetValue<string>() == "committed", "committed");

        await _page.GotoAsync($"/#/tx/{gid}");

        await Expect(_page.Locator("#tx-decision")).ToHaveTextAsync("commit");
        await Expect(_page.Locator("#timeline tr[data-kind=vote]")).ToHaveCountAsync(2);
        await Expect(_page.Locator("#timeline tr[data-kind=vote]").First).ToContainTextAsync("yes");
        (await _page.Locator("#timeline tr[data-kind=phase]").CountAsync()).ShouldBeGreaterThanOrEqualTo(1);
        await Expect(_page.Locator("#timeline tr[data-kind=attempt-succeeded]", new() { HasText = "bank · doCommit" })).ToHaveCountAsync(1);
        await Expect(_page.Locator("svg.graph g.node[data-branch=shop]")).ToHaveAttributeAsync("data-status", "committed");
        await Expect(_page.Locator("svg.graph g.node[data-branch=shop] text.state")).ToContainTextAsync("vote yes");
    }

    [Fact]
    public async Task Instances_ShowsThisCoordinatorWithTheTransactionsItHolds_LiveUntilTheyFinish()
    {
        var owner = ((Treaty.Core.Engine.TransactionEngine)fixture.Coordinator.Services.GetService(typeof(Treaty.Core.Engine.TransactionEngine))!).Lease.Owner;
        var gid = DashboardFixture.NewGid("held");
        var action = $"{gid}/only/action";
        fixture.Participant.Fail(action, 503);
        var retry = new JsonObject { ["maxAttempts"] = 1000, ["initialDelayMs"] = 50, ["maxDelayMs"] = 100 };
        await fixture.SubmitAsync("saga", gid, [fixture.Branch(gid, "only", ["action", "compensate"], retry: retry)], wait: "0s");

        await _page.GotoAsync("/#/instances");

        var row = _page.Locator("#instance-rows tr[data-instance]");
        await Expect(row).ToHaveCountAsync(1);
        await Expect(row).ToHaveAttributeAsync("data-instance", owner);
        await Expect(row.Locator("[data-self]")).ToHaveTextAsync("(this one)");
        await Expect(row.Locator("[data-lease]")).ToHaveTextAsync("live");
        await Expect(_page.Locator("[data-nav=instances]")).ToHaveClassAsync(new Regex("active"));
        await Expect(_page.Locator("#instances-summary")).ToHaveTextAsync($"Answered by {owner}.");
        var held = int.Parse(await row.Locator("[data-held]").GetAttributeAsync("data-held") ?? "", System.Globalization.CultureInfo.InvariantCulture);
        held.ShouldBeGreaterThanOrEqualTo(1);

        // The participant recovers: the transaction finishes, and the page (polling, no reload) shows
        // this instance holding fewer (other tests' transactions of this coordinator may finish too).
        fixture.Participant.Heal(action);
        await fixture.WaitForAsync(gid, tx => tx["status"]!.GetValue<string>() == "committed", "committed");
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (await HeldNowAsync() >= held && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }

        (await HeldNowAsync()).ShouldBeLessThan(held);

        async Task<int> HeldNowAsync()
        {
            if (await _page.Locator("#instance-rows td.empty").CountAsync() == 1)
            {
                return 0;
            }

            try
            {
                var text = await row.Locator("[data-held]").TextContentAsync(new() { Timeout = 2_000 });
                return int.Parse(text ?? "", System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (TimeoutException)
            {
                return held; // the row was being replaced: look again
            }
        }
    }

    [Fact]
    public async Task Stuck_OperatorRetriesAfterTheParticipantRecovers_AndTheTransactionFinishes()
    {
        var gid = DashboardFixture.NewGid("stuck");
        var confirm = $"{gid}/stock/confirm";
        fixture.Participant.Fail(confirm, 503);
        // Two attempts, then stuck; stuck retries only every 10 minutes, so only the operator finishes it here.
        var retry = new JsonObject { ["maxAttempts"] = 2, ["initialDelayMs"] = 20, ["maxDelayMs"] = 600_000 };
        await fixture.SubmitAsync("tcc", gid,
        [
            fixture.Branch(gid, "wallet", ["try", "confirm", "cancel"]),
            fixture.Branch(gid, "stock", ["try", "confirm", "cancel"], retry: retry),
        ], wait: "0s");
        await fixture.WaitForAsync(gid, tx => tx["stuck"]!.GetValue<bool>(), "stuck");

        await _page.GotoAsync("/#/stuck");

        var row = _page.Locator($"#stuck-rows tr[data-gid='{gid}']");
        await Expect(row).ToContainTextAsync("stock.confirm");
        await Expect(row).ToContainTextAsync("503");
        await Expect(_page.Locator("#stuck-badge")).ToBeVisibleAsync();
        // The commit is decided: only a retry can finish it, so the page offers no abort.
        await Expect(row.Locator("button[data-action=abort]")).ToHaveCountAsync(0);
        await BrowserSession.ScreenshotAsync(_page, "dashboard-stuck.png");

        fixture.Participant.Heal(confirm);
        await row.Locator("button[data-action=retry]").ClickAsync();

        await Expect(row).ToHaveCountAsync(0);
        (await fixture.WaitForAsync(gid, tx => tx["status"]!.GetValue<string>() == "committed", "committed"))["stuck"]!.GetValue<bool>().ShouldBeFalse();
        await _page.GotoAsync($"/#/tx/{gid}");
        await Expect(_page.Locator(".tx-header [data-status]")).ToHaveTextAsync("committed");
        // The server names the actor (the key, or the address without keys); no header can.
        await Expect(_page.Locator("#timeline tr[data-kind=operator-retry]")).ToContainTextAsync("anonymous@127.0.0.1");
        await Expect(_page.Locator("svg.graph g.node[data-branch=stock]")).ToHaveAttributeAsync("data-status", "confirmed");
        var attempts = _page.Locator("#timeline tr[data-kind=attempt-unknown]", new() { HasText = "stock · confirm" });
        await Expect(attempts).ToHaveCountAsync(2);
        await Expect(attempts.First).ToContainTextAsync("HTTP 503");
    }

    [Fact]
    public async Task Transaction_OperatorAbortsARunningSaga_AndTheAbortIsInTheTimeline()
    {
        var gid = DashboardFixture.NewGid("abort");
        fixture.Participant.Fail($"{gid}/pay/action", 503);
        var slow = new JsonObject { ["maxAttempts"] = 50, ["initialDelayMs"] = 60_000, ["maxDelayMs"] = 60_000 };
        await fixture.SubmitAsync("saga", gid,
        [
            fixture.Branch(gid, "order", ["action", "compensate"]),
            fixture.Branch(gid, "pay", ["action", "compensate"], retry: slow),
        ], wait: "0s");
        await fixture.WaitForAsync(gid, tx => tx["branches"]![1]!["ops"]!["action"]!["attempts"]!.GetValue<int>() >= 1, "tried once");
        await _page.GotoAsync($"/#/tx/{gid}");
        var abort = _page.Locator("#tx-actions button[data-action=abort]");
        await _page.FillAsync("#tx-actions .reason-input", "customer cancelled");

        await abort.ClickAsync();
        await Expect(abort).ToHaveTextAsync("Confirm abort");
        await abort.ClickAsync();

        await Expect(_page.Locator(".tx-header [data-status]")).ToHaveTextAsync("aborted");
        await Expect(_page.Locator("#timeline tr[data-kind=operator-abort]")).ToContainTextAsync("customer cancelled");
        await Expect(_page.Locator("svg.graph g.node[data-branch=order]")).ToHaveAttributeAsync("data-status", "compensated");
    }

    private ILocator Row(string gid) => _page.Locator($"#tx-rows tr[data-gid='{gid}']");

    private async Task<double> X(string branch)
    {
        var transform = await _page.Locator($"svg.graph g.node[data-branch={branch}]").GetAttributeAsync("transform");
        return double.Parse(transform!.Split(' ', '(')[1], System.Globalization.CultureInfo.InvariantCulture);
    }

    private Task<JsonObject> SubmitSagaAsync(string gid) =>
        fixture.SubmitAsync("saga", gid, [fixture.Branch(gid, "only", ["action", "compensate"])]);
}
