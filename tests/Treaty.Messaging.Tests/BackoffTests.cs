namespace Treaty.Messaging.Tests;

public sealed class BackoffTests
{
    private static readonly TimeSpan First = TimeSpan.FromMilliseconds(200);
    private static readonly TimeSpan Max = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(0, 0)]
    [InlineData(1, 200)]
    [InlineData(2, 400)]
    [InlineData(3, 800)]
    [InlineData(8, 25_600)]
    [InlineData(9, 30_000)]
    [InlineData(1_000, 30_000)]
    public void Delay_DoublesPerFailure_UpToTheMax(int failures, int expectedMs) =>
        Backoff.Delay(failures, First, Max).ShouldBe(TimeSpan.FromMilliseconds(expectedMs));

    [Fact]
    public void Delay_NeverDecreases_AndNeverExceedsTheMax()
    {
        var previous = TimeSpan.Zero;
        for (var failures = 0; failures < 200; failures++)
        {
            var delay = Backoff.Delay(failures, First, Max);
            delay.ShouldBeGreaterThanOrEqualTo(previous);
            delay.ShouldBeLessThanOrEqualTo(Max);
            previous = delay;
        }
    }

    [Fact]
    public void Options_WithoutAServiceName_FailAtRegistration() =>
        Should.Throw<InvalidOperationException>(() =>
            new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddTreatyMessaging(o => o.MaxAttempts = 3));

    [Fact]
    public void Options_WithZeroAttempts_FailAtRegistration() =>
        Should.Throw<InvalidOperationException>(() =>
            new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddTreatyMessaging(o => { o.ServiceName = "x"; o.MaxAttempts = 0; }));
}
