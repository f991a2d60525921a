-- Argo CD health of a berth.dev BackupPolicy (Argo CD runs it with the object as `obj`).
-- Healthy: Ready=True at the current generation. Degraded: an InvalidSpec condition (a
-- BackupPolicy has no Degraded condition). Suspended: spec.suspend, once Berth has observed it.
-- Progressing: anything else (e.g. the bucket cannot be reached: Ready=False).
local hs = { status = "Progressing", message = "waiting for the Berth operator to report status" }
local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.message = "waiting for the Berth operator to observe generation " .. generation
  return hs
end

-- Whether condition `c` was computed for the current generation.
local function is_current(c)
  return generation == nil or c.observedGeneration == nil or c.observedGeneration == generation
end

local function condition(type_)
  for _, c in ipairs(status.conditions) do
    if c.type == type_ and is_current(c) then
      return c
    end
  end
  return nil
end

for _, c in ipairs(status.conditions) do
  if c.reason == "InvalidSpec" and is_current(c) then
    return { status = "Degraded", message = c.message }
  end
end
local ready = condition("Ready")
if obj.spec ~= nil and obj.spec.suspend == true then
  local message = "spec.suspend is true: no new backups"
  if ready ~= nil and ready.reason == "Suspended" then
    message = ready.message
  end
  return { status = "Suspended", message = message }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message }
end
if ready ~= nil then
  hs.message = ready.message
end
return hs
