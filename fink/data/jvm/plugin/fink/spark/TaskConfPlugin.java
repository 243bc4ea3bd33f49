package fink.spark;

import java.lang.reflect.Method;
import java.util.Map;

import org.apache.spark.TaskContext;
import org.apache.spark.api.plugin.DriverPlugin;
import org.apache.spark.api.plugin.ExecutorPlugin;
import org.apache.spark.api.plugin.PluginContext;
import org.apache.spark.api.plugin.SparkPlugin;
import org.apache.spark.sql.internal.ReadOnlySQLConf;
import org.apache.spark.sql.internal.SQLConf;
import org.apache.spark.sql.internal.SQLConf$;

/**
 * One SQL configuration per task, not one per call.
 *
 * <p>In a running task, Spark 4.2's {@code SQLConf.get()} builds a new {@code ReadOnlySQLConf}
 * from the task's local properties at each call unless the thread holds one already, and
 * {@code from_avro} calls it for each field of each nested record it decodes (through
 * {@code SpecificInternalRow}): a ZTF alert's history made that thousands of configurations an
 * alert, 11 % of the driver JVM's CPU samples at 150 alerts/s. This plugin gives each task
 * thread the configuration {@code SQLConf.get()} would build, once, when the task starts, and
 * takes it back when the task ends. The local properties a configuration is built from are the
 * task's and do not change while it runs, so every call sees the same values as before.
 */
public final class TaskConfPlugin implements SparkPlugin {

  private static final ThreadLocal<SQLConf> EXISTING = existing();

  @SuppressWarnings("unchecked")
  private static ThreadLocal<SQLConf> existing() {
    try {  // a lazy val of the SQLConf object: its accessor makes it
      Method accessor = SQLConf$.class.getDeclaredMethod("existingConf");
      accessor.setAccessible(true);
      return (ThreadLocal<SQLConf>) accessor.invoke(SQLConf$.MODULE$);
    } catch (ReflectiveOperationException | RuntimeException e) {
      return null; // another Spark: the plugin does nothing
    }
  }

  /**
   * In a task (SQL's {@code reflect('fink.spark.TaskConfPlugin', 'sameConf')}): "true" when two
   * calls of {@code SQLConf.get()} give the same configuration, as they do with the plugin on.
   */
  public static String sameConf() {
    return String.valueOf(SQLConf.get() == SQLConf.get());
  }

  @Override
  public DriverPlugin driverPlugin() {
    return null;
  }

  @Override
  public ExecutorPlugin executorPlugin() {
    return new ExecutorPlugin() {
      @Override
      public void init(PluginContext ctx, Map<String, String> extraConf) {
      }

      @Override
      public void onTaskStart() {
        TaskContext task = TaskContext.get();
        SQLConf held = EXISTING == null ? null : EXISTING.get();
        // this task's own, also over one a task that ended without its callbacks left behind
        if (EXISTING != null && task != null && (held == null || held instanceof ReadOnlySQLConf)) {
          EXISTING.set(new ReadOnlySQLConf(task));
        }
      }

      @Override
      public void onTaskSucceeded() {
        release();
      }

      @Override
      public void onTaskFailed(org.apache.spark.TaskFailedReason reason) {
        release();
      }

      private void release() {
        if (EXISTING != null && EXISTING.get() instanceof ReadOnlySQLConf) {
          EXISTING.remove();
        }
      }
    };
  }
}
