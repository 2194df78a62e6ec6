using System.Net.Http.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Spectre.Console;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary><c>treaty tx show</c> prints what a commit protocol decided and why: phase, decision, every vote.</summary>
public sealed class TxShowTests
{
    [Fact]
    public async Task TxShow_TwoPhaseWithANoVote_PrintsPhaseDecisionAndEveryVote()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync();
        await using var participant = await VotingParticipant.StartAsync();
        var request = new SubmitTransactionRequest
        {
            Gid = "show-2pc",
            Protocol = "2pc",
            Branches =
            [
                Branch("payment", participant.Url("yes")),
                Branch("stock", participant.Url("no")),
            ],
        };
        var view = await coordinator.Client.SubmitAsync(request, wait: TimeSpan.FromSeconds(20));
        view.Status.ShouldBe("aborted");

        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text),
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 200;

        (await TxCommands.ShowAsync(coordinator.Client, "show-2pc", console, CancellationToken.None)).ShouldBe(0);

        var output = text.ToString();
        output.ShouldContain("phase: rollback   decision: abort", customMessage: output);
        output.ShouldContain("reason: stock.prepare failed", customMessage: output);
        output.ShouldMatch(@"payment\s+rollback-sent\s+yes\s+rollback\s+sent");
        output.ShouldMatch(@"stock\s+refused\s+no\s+prepare\s+failed\s+1\s+409");
        output.ShouldMatch(@"vote\s+payment\.prepare\s+yes"); // the timeline's votes, decision and the rollback sent
        output.ShouldMatch(@"vote\s+stock\.prepare\s+no: HTTP 409: out of stock");
        output.ShouldMatch(@"aborting\s+stock\.prepare failed");
        output.ShouldMatch(@"notified\s+payment\.rollback");
    }

    [Fact]
    public async Task TxShow_Choreography_PrintsTheServicesAndTheReportedEventsInOrder()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync();
        await coordinator.Client.ReportEventsAsync(
        [
            new ChoreographyEventRequest("m1", "order.created", "order", "show-choreo"),
            new ChoreographyEventRequest("m2", "payment.failed", "payment", "show-choreo"),
            new ChoreographyEventRequest("m3", "order.cancelled", "order", "show-choreo") { Outcome = "compensated" },
        ]);

        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text),
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 200;

        (await TxCommands.ShowAsync(coordinator.Client, "show-choreo", console, CancellationToken.None)).ShouldBe(0);

        var output = text.ToString();
        output.ShouldMatch(@"show-choreo\S* choreography aborted");
        output.ShouldContain("reason: order reported order.cancelled (compensated)", customMessage: output);
        output.ShouldMatch(@"payment\s+reported\s+payment\.failed\s+succeeded\s+1");
        output.ShouldMatch(@"event\s+order\.order\.created\s+1[\s\S]*event\s+payment\.payment\.failed\s+2[\s\S]*event\s+order\.order\.cancelled\s+3");
    }

    private static BranchRequest Branch(string name, string url) =>
        new() { Name = name, Prepare = url + "/prepare", Commit = url + "/commit", Rollback = url + "/rollback" };

    /// <summary>Answers 200 under /yes and, a little later, 409 under /no.</summary>
    private sealed class VotingParticipant : IAsyncDisposable
    {
        private readonly WebApplication _app;

        private VotingParticipant(WebApplication app) => _app = app;

        public static async Task<VotingParticipant> StartAsync()
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            var app = builder.Build();
            app.MapPost("/yes/{op}", () => Results.Ok());
            // The NO comes late, so that the YES vote is in when the coordinator decides.
            app.MapPost("/no/{op}", async () =>
            {
                await Task.Delay(TimeSpan.FromSeconds(1.5));
                return Results.Conflict(new { detail = "out of stock" });
            });
            await app.StartAsync();
            return new VotingParticipant(app);
        }

        public string Url(string prefix) => $"{_app.Urls.Single()}/{prefix}";

        public async ValueTask DisposeAsync() => await _app.DisposeAsync();
    }
}
