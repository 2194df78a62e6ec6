using Microsoft.Extensions.DependencyInjection;
using Treaty.Client;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>A coordinator whose timers fire 5 ms early, as Linux timers can (coarse tick, truncated due times).</summary>
public sealed class EarlyTimerServerFixture : IAsyncLifetime
{
    public Participant Participant { get; private set; } = null!;

    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Participant = await Participant.StartAsync();
        Coordinator = await InProcessCoordinator.StartAsync(configure: b =>
            b.Services.AddSingleton<TimeProvider>(new EarlyTimers(TimeSpan.FromMilliseconds(5))));
    }

    public async Task DisposeAsync()
    {
        try
        {
            if (Coordinator is not null)
            {
                await Coordinator.DisposeAsync();
            }
        }
        finally
        {
            if (Participant is not null)
            {
                await Participant.DisposeAsync();
            }
        }
    }
}

/// <summary>
/// A timer that wakes the engine a little before a retry or a deadline is due must not leave the
/// transaction asleep for good: the engine has to look again when it is due.
/// </summary>
public sealed class TimerTests(EarlyTimerServerFixture fixture) : IClassFixture<EarlyTimerServerFixture>
{
    private string Url(string gid, string branch, string op) => fixture.Participant.Url($"{gid}/{branch}/{op}");

    [Fact]
    public async Task Retry_TimerFiresBeforeTheRetryIsDue_TheRetryStillHappens()
    {
        var gid = Api.NewGid("earlyretry");
        fixture.Participant.FailTimes($"{gid}/s1/action", 2, 503);

        await fixture.Coordinator.Client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"), retry: new RetrySettings(5, TimeSpan.FromMilliseconds(20), TimeSpan.FromMilliseconds(50)))
            .SubmitAsync();

        var view = await Api.WaitForStatusAsync(fixture.Coordinator.Http, gid, "committed", TimeSpan.FromSeconds(10));
        view.Op("s1", "action").Attempts.ShouldBe(3);
    }

    [Fact]
    public async Task Timeout_TimerFiresBeforeTheDeadline_TheSagaStillAborts()
    {
        var gid = Api.NewGid("earlydeadline");
        var hang = fixture.Participant.Hold($"{gid}/s1/action");
        try
        {
            await fixture.Coordinator.Client.Saga(gid).WithPayload(Api.Payload)
                .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))
                .WithTimeout(TimeSpan.FromMilliseconds(300))
                .SubmitAsync();

            var view = await Api.WaitUntilAsync(fixture.Coordinator.Http, gid, v => v.Status == "aborting", "aborting on its deadline", TimeSpan.FromSeconds(10));
            view.Reason.ShouldBe("transaction timed out");
        }
        finally
        {
            hang.Open();
        }

        await Api.WaitForStatusAsync(fixture.Coordinator.Http, gid, "aborted", TimeSpan.FromSeconds(10));
    }
}
